/**
 * Start/stop/restart of the language server run one at a time, and a burst of restart requests (a
 * settings change, then another, then the Python extension switching interpreter) makes one restart.
 * Pure, so unit tests check the ordering without VS Code.
 */
export class SerialRunner {
  private queue: Promise<void> = Promise.resolve();
  private pendingRestart: Promise<void> | undefined;

  /** Run `task` after everything queued before it, whatever those tasks' outcome. */
  run(task: () => Promise<void>): Promise<void> {
    const next = this.queue.then(task, task);
    this.queue = next.catch(() => undefined);
    return next;
  }

  /**
   * Queue `restart` unless one is already waiting to begin: then share that one. A restart that has
   * begun does not absorb new requests (they may carry settings it did not see).
   */
  restart(restart: () => Promise<void>): { promise: Promise<void>; coalesced: boolean } {
    if (this.pendingRestart) {
      return { promise: this.pendingRestart, coalesced: true };
    }
    const promise = this.run(async () => {
      this.pendingRestart = undefined;
      await restart();
    });
    this.pendingRestart = promise;
    return { promise, coalesced: false };
  }
}
