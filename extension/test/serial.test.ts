/** Start/stop/restart ordering and restart coalescing (the guard against double restarts). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SerialRunner } from '../src/serial';

const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 5));

describe('SerialRunner', () => {
  it('runs tasks one at a time, in order, even after a failure', async () => {
    const s = new SerialRunner();
    const events: string[] = [];
    const task = (name: string, fail = false) => async (): Promise<void> => {
      events.push(`${name}:begin`);
      await tick();
      events.push(`${name}:end`);
      if (fail) throw new Error(name);
    };
    const a = s.run(task('a'));
    const b = s.run(task('b', true));
    const c = s.run(task('c'));
    await a;
    await assert.rejects(b, /b/);
    await c;
    assert.deepEqual(events, ['a:begin', 'a:end', 'b:begin', 'b:end', 'c:begin', 'c:end']);
  });

  it('a burst of restarts while the server starts makes one restart', async () => {
    const s = new SerialRunner();
    let restarts = 0;
    const start = s.run(tick);
    const r1 = s.restart(async () => {
      restarts += 1;
      await tick();
    });
    const r2 = s.restart(async () => {
      restarts += 1;
    });
    const r3 = s.restart(async () => {
      restarts += 1;
    });
    assert.equal(r1.coalesced, false);
    assert.ok(r2.coalesced && r3.coalesced);
    assert.equal(r2.promise, r1.promise);
    await Promise.all([start, r1.promise, r2.promise, r3.promise]);
    assert.equal(restarts, 1);
  });

  it('a restart asked for while one is running queues exactly one more', async () => {
    const s = new SerialRunner();
    let restarts = 0;
    let second: ReturnType<SerialRunner['restart']> | undefined;
    let third: ReturnType<SerialRunner['restart']> | undefined;
    const first = s.restart(async () => {
      restarts += 1;
      // Requested after this restart began: it may carry settings this one did not see.
      second = s.restart(async () => {
        restarts += 1;
      });
      third = s.restart(async () => {
        restarts += 1;
      });
      await tick();
    });
    await first.promise;
    assert.ok(second && third);
    assert.equal(second.coalesced, false);
    assert.equal(third.coalesced, true);
    await second.promise;
    assert.equal(restarts, 2);
  });
});
