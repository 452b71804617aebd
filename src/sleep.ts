/** Resolves after `ms` milliseconds (a timer, so other work runs meanwhile). */
export const sleep = (ms: number): Promise<void> => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A timer that does not keep Node running (browsers have no unref: returned as is). */
export function unrefTimer<T>(timer: T): T {
  (timer as { unref?: () => void }).unref?.();
  return timer;
}
