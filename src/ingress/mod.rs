//! Redis ingress: how backends that were written for Flask-SocketIO, python-socketio or the Node
//! `@socket.io/redis-emitter` reach Herald's sockets without being changed (SPEC §6).

pub mod decode;
