//! Redis ingress: decoders for each backend's wire format ([`decode`]) and the listener that
//! feeds them into the delivery path ([`listener`]).

pub mod decode;
pub mod listener;
