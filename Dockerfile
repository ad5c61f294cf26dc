# syntax=docker/dockerfile:1
# The orchestrator's image: `microtask daemon` and `microtask worker` (docker-compose.yml).
#   docker build -t microtask-orchestrator .
#   docker run --rm microtask-orchestrator --help

# ---- build: compile TypeScript to dist/ ---------------------------------------------
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would build before the sources are here, and the native
# dev-only dependencies (better-sqlite3 for the benchmarks) are not needed to compile.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies, the compiled code, the offline cassette -------
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production \
    MICROTASK_STATE_DIR=/data
WORKDIR /app
# bubblewrap: the sandbox the tool builder runs generated code in (README, "Security").
# It needs user namespaces, which Docker's default seccomp profile forbids: see the daemon
# service in docker-compose.yml. Without them the --help check is not run, and builds say so.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
# typescript is a production dependency: the tool builder type-checks generated code.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
# examples/: the offline cassette (the model when no ANTHROPIC_API_KEY is set) and the
# example inputs the CLI compares a spec with.
COPY examples ./examples
# State (tools the daemon writes; snapshots and results in embedded mode) lives in /data,
# owned by the unprivileged `node` user (uid 1000) of the base image.
RUN mkdir -p /data && chown node:node /data
VOLUME ["/data"]
USER node
# The daemon and workers stop gracefully on SIGTERM (docker stop); see stop_grace_period
# in docker-compose.yml.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["daemon"]
