// The README tour's Node client: connects to Herald with a token, prints the welcome
// notification and the next notification, then exits 0.
//
//   node examples/tour.mjs "$TOKEN"         (or TOKEN=... node examples/tour.mjs)
//
// HERALD_URL: the server (default http://localhost:5000). TOUR_TIMEOUT: seconds to wait for
// both notifications (default 120); past it, or when Herald refuses the token, exits 1.
// socket.io-client 4.x comes from npm: npm ci --prefix examples (examples/package.json).
import { io } from "socket.io-client";

const token = process.argv[2] || process.env.TOKEN;
const url = process.env.HERALD_URL || "http://localhost:5000";
const timeoutSecs = Number(process.env.TOUR_TIMEOUT || 120);

if (!token) {
  console.error("tour.mjs: no token: pass it as the first argument or in TOKEN");
  console.error('  TOKEN=$(./target/release/herald token --user 42 --role admin); node examples/tour.mjs "$TOKEN"');
  process.exit(2);
}

const socket = io(url, { query: { token }, transports: ["websocket"] });
let seen = 0;

const fail = (message) => {
  console.error(`tour.mjs: ${message}`);
  socket.close();
  process.exit(1);
};
const timer = setTimeout(
  () => fail(`timed out after ${timeoutSecs} s (${seen ? "no notification after the welcome" : "no welcome"} from ${url})`),
  timeoutSecs * 1000,
);

console.error(`tour.mjs: connecting to ${url}`);
socket.on("connect_error", (err) => {
  // socket.active is false when the server refused the connection (e.g. a bad token):
  // socket.io-client does not retry then. Otherwise (server not up yet) it retries by itself.
  if (!socket.active) fail(`Herald refused the connection: ${err.message}`);
});
socket.on("notification", (n) => {
  seen += 1;
  if (seen === 1) {
    if (n.type !== "welcome") fail(`expected the welcome first, got ${JSON.stringify(n)}`);
    console.log(`welcome: ${JSON.stringify(n)}`);
    console.error("tour.mjs: connected; waiting for the next notification (send one with curl)");
    return;
  }
  console.log(`notification: ${JSON.stringify(n)}`);
  clearTimeout(timer);
  socket.close();
  process.exit(0);
});
