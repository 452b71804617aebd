/** Resolves after `ms` milliseconds (a timer, so other work runs meanwhile). */
export const sleep = (ms: number): Promise<void> => new Promise<void>((resolve) => setTimeout(resolve, ms));
