// Runs a private nginx (own prefix, config from nginx.template.conf, free loopback port).
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HERE, freePort, spawnLogged, waitUntil, stopProcess, hasExited } from './cluster.js';

export function nginxBinary() {
  return process.env.NGINX_BIN || ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/bin/nginx'].find((p) => {
    try { readFileSync(p); return true; } catch { return false; }
  });
}

export class Nginx {
  static async start(upstreamPorts) {
    const bin = nginxBinary();
    if (!bin) throw new Error('nginx not installed (run.sh installs it with apt-get when root)');
    const n = new Nginx();
    n.prefix = mkdtempSync(join(tmpdir(), 'herald-nginx-'));
    n.port = await freePort();
    n.url = `http://127.0.0.1:${n.port}`;
    const upstreams = upstreamPorts.map((p) => `        server 127.0.0.1:${p} max_fails=1 fail_timeout=10s;`).join('\n');
    const conf = readFileSync(join(HERE, 'nginx.template.conf'), 'utf8')
      .replaceAll('{{PREFIX}}', n.prefix).replaceAll('{{PORT}}', String(n.port)).replaceAll('{{UPSTREAMS}}', upstreams);
    n.confPath = join(n.prefix, 'nginx.conf');
    writeFileSync(n.confPath, conf);
    n.proc = spawnLogged(`nginx-${n.port}`, bin, ['-p', n.prefix, '-c', n.confPath, '-e', join(n.prefix, 'error.log')]);
    await waitUntil(async () => {
      if (hasExited(n.proc)) throw Object.assign(new Error(`nginx exited: ${n.errorLog()}`), { fatal: true });
      const r = await fetch(`${n.url}/health`);
      return r.status === 200;
    }, { what: 'nginx' });
    return n;
  }

  errorLog() { try { return readFileSync(join(this.prefix, 'error.log'), 'utf8').slice(-2000); } catch { return ''; } }

  async stop() {
    await stopProcess(this.proc, 'SIGTERM', 3000);
    rmSync(this.prefix, { recursive: true, force: true });
  }
}
