// Drives py/emitter.py (real python-socketio / Flask-SocketIO) in one of the two virtualenvs.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { HERE } from './cluster.js';

export const GENERATIONS = [
  { venv: '.venv-json', label: 'JSON era (python-socketio >= 5.14)' },
  { venv: '.venv-pickle', label: 'pickle era (python-socketio 5.13.0)' },
];

export const bytes = (buf) => ({ $bytes: Buffer.from(buf).toString('base64') });
export const tuple = (...items) => ({ $tuple: items });

export class PyEmitter {
  static async start(venv, mode, redisUrl) {
    const py = join(HERE, venv, 'bin', 'python');
    if (!existsSync(py)) throw new Error(`${py} missing: run run.sh (it creates the virtualenvs)`);
    const e = new PyEmitter();
    e.label = `${venv}/${mode}`;
    e.proc = spawn(py, [join(HERE, 'py', 'emitter.py'), '--mode', mode, '--url', redisUrl], { stdio: ['pipe', 'pipe', 'pipe'] });
    e.stderr = '';
    e.proc.stderr.on('data', (d) => { e.stderr += d; });
    e.lines = createInterface({ input: e.proc.stdout })[Symbol.asyncIterator]();
    const first = await e.next();
    if (!first.ready) throw new Error(`emitter ${e.label} did not start: ${e.stderr}`);
    e.version = first.python_socketio;
    return e;
  }

  async next() {
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 20000);
    const { value, done } = await this.lines.next();
    clearTimeout(timer);
    if (done) throw new Error(`emitter ${this.label} exited: ${this.stderr}`);
    return JSON.parse(value);
  }

  async op(message) {
    this.proc.stdin.write(`${JSON.stringify(message)}\n`);
    const r = await this.next();
    if (!r.ok) throw new Error(`emitter ${this.label} failed ${JSON.stringify(message)}: ${r.error}`);
  }

  emit(event, args, { to, skip_sid, namespace } = {}) {
    return this.op({ op: 'emit', event, args, to, skip_sid, namespace });
  }

  stop() {
    try { this.proc.stdin.end(); } catch { /* ignore */ }
    this.proc.kill('SIGKILL');
  }
}
