// Serves the README tour's browser page (examples/tour.html) and socket.io-client's browser
// bundle, from examples/node_modules (npm ci --prefix examples). No dependencies besides that.
//
//   node examples/serve.mjs            then open http://localhost:8000/?token=...
//
// PORT: the port (default 8000). Only these two files are served.
import { createServer } from "node:http";
import { readFileSync, existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const bundle = join(here, "node_modules", "socket.io-client", "dist", "socket.io.min.js");
const port = Number(process.env.PORT || 8000);

if (!existsSync(bundle)) {
  console.error(`serve.mjs: ${bundle} is missing: install socket.io-client first with`);
  console.error("  npm ci --prefix examples");
  process.exit(1);
}

const files = {
  "/": [join(here, "tour.html"), "text/html; charset=utf-8"],
  "/socket.io.min.js": [bundle, "text/javascript; charset=utf-8"],
};

const server = createServer((req, res) => {
  const path = new URL(req.url, "http://localhost").pathname;
  const file = files[path === "/index.html" || path === "/tour.html" ? "/" : path];
  if (!file || (req.method !== "GET" && req.method !== "HEAD")) {
    res.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
    return;
  }
  const body = readFileSync(file[0]);
  res.writeHead(200, { "Content-Type": file[1], "Content-Length": body.length, "Cache-Control": "no-store" });
  res.end(req.method === "HEAD" ? undefined : body);
});
server.on("error", (err) => {
  console.error(`serve.mjs: cannot listen on port ${port}: ${err.message} (set PORT)`);
  process.exit(1);
});
server.listen(port, () => {
  console.error(`serve.mjs: the tour page is on http://localhost:${port}/?token=...`);
});
