// Draws a laid-out statechart (GET /api/machines/:id) as SVG, and highlights the states
// of a snapshot on it. No library: the layout was done by ELK on the server.

const SVG = 'http://www.w3.org/2000/svg';

function el(name, attributes = {}, children = []) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function text(content, attributes) {
  const node = el('text', attributes);
  node.textContent = content;
  return node;
}

/** The paths ('a', 'a.b') a state value makes active: 'x' → ['x']; {a: 'b'} → ['a', 'a.b']. */
/** Whether a transition on `descriptor` takes `event`: equal, or a wildcard (`xstate.done.actor.*`, as XState matches it). */
function matches(descriptor, event) {
  return descriptor === event || (descriptor.endsWith('.*') && event.startsWith(descriptor.slice(0, -1)));
}

export function activePaths(value, prefix = []) {
  if (value === undefined || value === null) return [];
  if (typeof value === 'string') return [[...prefix, value].join('.')];
  const paths = [];
  for (const [key, child] of Object.entries(value)) {
    const path = [...prefix, key];
    paths.push(path.join('.'));
    paths.push(...activePaths(child, path));
  }
  return paths;
}

/**
 * Renders `model` into `container`; returns `highlight(value, takenEvent)` to mark the
 * active states (and the transitions of the event that led there) without redrawing.
 */
export function renderStatechart(container, model) {
  const pad = 12;
  const svg = el('svg', {
    class: 'statechart',
    width: model.width + pad * 2,
    height: model.height + pad * 2,
    viewBox: `${-pad} ${-pad} ${model.width + pad * 2} ${model.height + pad * 2}`,
    'data-machine': model.machineId,
  });
  svg.append(
    el('defs', {}, [
      el('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, [
        el('path', { d: 'M0,0 L10,5 L0,10 z' }),
      ]),
      el('marker', { id: 'arrow-taken', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, [
        el('path', { d: 'M0,0 L10,5 L0,10 z' }),
      ]),
    ]),
  );

  const states = new Map(); // path → <g>
  const nodesById = new Map();
  const drawNode = (node, isRoot) => {
    nodesById.set(node.id, node);
    const classes = ['state', node.type, isRoot ? 'root' : ''].filter(Boolean).join(' ');
    const g = el('g', { class: classes, 'data-state-path': node.path.join('.'), 'data-state-id': node.id });
    const title = el('title');
    title.textContent = [
      node.id,
      node.description,
      node.invokes.length ? `invokes: ${node.invokes.map((i) => i.src).join(', ')}` : '',
      node.entry.length ? `entry: ${node.entry.join(', ')}` : '',
    ].filter(Boolean).join('\n');
    g.append(title);
    if (!isRoot) {
      g.append(el('rect', { x: node.x, y: node.y, width: node.width, height: node.height, rx: 8 }));
      if (node.type === 'final') {
        g.append(el('rect', { class: 'inner', x: node.x + 3, y: node.y + 3, width: node.width - 6, height: node.height - 6, rx: 6 }));
      }
      const compound = node.children.length > 0;
      const tx = compound ? node.x + 10 : node.x + node.width / 2;
      const anchor = compound ? 'start' : 'middle';
      g.append(text(node.key, { class: 'title', x: tx, y: node.y + 17, 'text-anchor': anchor }));
      node.invokes.forEach((invoke, i) => {
        g.append(text(`${invoke.spawned ? 'spawn' : 'invoke'} ${invoke.src}`, { class: 'invoke', x: tx, y: node.y + 32 + i * 14, 'text-anchor': anchor }));
      });
    }
    svg.append(g);
    states.set(node.path.join('.'), g);
    for (const child of node.children) drawNode(child, false);
    // The initial state: a dot with an arrow into it.
    if (node.initial) {
      const initial = node.children.find((child) => child.key === node.initial);
      if (initial) {
        const cx = initial.x - 14;
        const cy = initial.y + 12;
        svg.append(el('circle', { class: 'initial', cx, cy, r: 4 }));
        svg.append(el('path', { d: `M${cx + 4},${cy} L${initial.x},${cy}`, stroke: '#334155', 'marker-end': 'url(#arrow)' }));
      }
    }
  };
  drawNode(model.root, true);

  const edges = [];
  for (const edge of model.edges) {
    const d = edge.points.map((p, i) => `${i === 0 ? 'M' : 'L'}${p.x},${p.y}`).join(' ');
    const g = el('g', { class: `edge ${edge.kind}`, 'data-event': edge.event, 'data-source': edge.source, 'data-target': edge.target });
    const title = el('title');
    title.textContent = `${edge.event || 'always'}${edge.guard ? ` [${edge.guard}]` : ''}\n${edge.source} → ${edge.target}`;
    g.append(title);
    const path = el('path', { d, 'marker-end': 'url(#arrow)' });
    g.append(path);
    const box = edge.labelBox;
    g.append(el('rect', { class: 'label-bg', x: box.x - 2, y: box.y - 1, width: box.width + 4, height: box.height + 2, rx: 3 }));
    g.append(text(edge.label, { x: box.x + 2, y: box.y + box.height - 4 }));
    svg.append(g);
    edges.push({ edge, g, path });
  }
  // Edges under states would hide the labels: draw states first, then raise edges above.

  container.replaceChildren(svg);

  return {
    svg,
    /**
     * Marks the states of `value` active, and the transitions `takenEvent` can have taken:
     * from a state active before (`previousValue`) or into one active now.
     */
    highlight(value, takenEvent, previousValue) {
      const active = new Set(activePaths(value));
      const before = new Set(activePaths(previousValue));
      for (const [path, g] of states) g.classList.toggle('active', path === '' ? false : active.has(path));
      const pathOf = (id) => nodesById.get(id)?.path.join('.');
      const taken = new Set();
      if (takenEvent) {
        const candidates = edges.filter(({ edge }) => matches(edge.event, takenEvent) && (before.size === 0 || before.has(pathOf(edge.source))));
        // Follow eventless (`always`) transitions from each candidate's target: the route
        // that ends in a state active now is the one taken, guards and all.
        for (const candidate of candidates) {
          const route = new Map([[candidate.edge.target, [candidate]]]);
          const queue = [candidate.edge.target];
          while (queue.length > 0) {
            const at = queue.shift();
            if (active.has(pathOf(at))) {
              for (const step of route.get(at)) taken.add(step);
              break;
            }
            for (const next of edges) {
              if (next.edge.kind !== 'always' || next.edge.source !== at || route.has(next.edge.target)) continue;
              route.set(next.edge.target, [...route.get(at), next]);
              queue.push(next.edge.target);
            }
          }
        }
        if (taken.size === 0) for (const candidate of candidates) taken.add(candidate);
      }
      for (const item of edges) {
        const on = taken.has(item);
        item.g.classList.toggle('taken', on);
        item.path.setAttribute('marker-end', on ? 'url(#arrow-taken)' : 'url(#arrow)');
      }
      // Keep the active state in view.
      const first = [...active].pop();
      const g = first !== undefined ? states.get(first) : undefined;
      return g;
    },
  };
}
