//! The splice: a stream verdict on the proxy's own two sockets of a connection (never the
//! app's), moving bytes from one to the other's egress inside the kernel. Filled in with the
//! splice itself.
