/** Waits `ms` (without keeping the process alive), or less when woken by stop(). */
export function pause(ms: number, wakers: Set<() => void>): Promise<void> {
  return new Promise((resolve) => {
    const wake = () => {
      clearTimeout(timer);
      wakers.delete(wake);
      resolve();
    };
    const timer = setTimeout(wake, ms);
    timer.unref();
    wakers.add(wake);
  });
}
