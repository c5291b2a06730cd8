"""The TLS and HTTP/2 plumbing of hbone_peer.py: TLS 1.3 over ssl.MemoryBIO, and an h2
connection whose streams keep HTTP/2 flow control as their backpressure."""

import asyncio, re, ssl

import h2.config, h2.connection, h2.events, h2.exceptions, h2.settings

# ztunnel's HTTP/2 settings (hbone.md section 1 and 3), so the peer stresses ours alike.
STREAM_WINDOW, CONN_WINDOW, MAX_FRAME = 4 << 20, 16 << 20, 1 << 20
READ_CHUNK = 256 << 10
EOF, DEAD = object(), object()  # inbox markers: peer's END_STREAM; stream reset / connection gone
S = h2.settings.SettingCodes


class StreamGone(Exception):
    pass


def tls_context(server, cert, key, ca):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # HBONE identities are SPIFFE URI SANs, never host names: the chain is verified against
    # --ca, the name check is off (so no server_hostname is needed, and none is sent as SNI).
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED  # server side: a client certificate is mandatory
    ctx.load_verify_locations(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def tls_reason(exc):
    """'tls: <OpenSSL's words>' without the '[SSL: X]' and '(_ssl.c:N)' noise."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: certificate verify failed: {exc.verify_message}"
    text = exc.args[1] if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else str(exc) or repr(exc)
    return "tls: " + re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(text))


class Tls:
    """TLS over a non-blocking socket through ssl.MemoryBIO. asyncio's own TLS transport
    drops the alert OpenSSL writes when a handshake fails, so a refused peer would only see
    a close; ztunnel (rustls) sends the alert, and so does this."""

    def __init__(self, sock, ctx, server):
        self.sock, self.loop = sock, asyncio.get_running_loop()
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        # server_hostname=None: no SNI (ztunnel sends none) and no name check (off in ctx).
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server, server_hostname=None)
        self.sender, self.send_error = None, None  # at most one sender task: records stay in order

    async def _fill(self):
        data = await self.loop.sock_recv(self.sock, READ_CHUNK)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    async def _send(self):
        try:
            while self.outgoing.pending:
                await self.loop.sock_sendall(self.sock, self.outgoing.read())
        except OSError as e:
            self.send_error = e

    def _kick(self):
        if self.outgoing.pending and (self.sender is None or self.sender.done()):
            self.sender = asyncio.create_task(self._send())

    async def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._kick()
                await self._fill()
            except ssl.SSLError:
                self._kick()  # the alert that tells the peer why
                await self.drain(ignore_errors=True)
                raise
        self._kick()

    async def read(self, n):
        """Up to n bytes; b"" at the peer's close (with or without close_notify)."""
        while True:
            try:
                data = self.obj.read(n)
                self._kick()
                return data
            except ssl.SSLWantReadError:
                self._kick()
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def write(self, data):
        try:
            self.obj.write(data)
        except ssl.SSLError as e:  # the TLS session already failed: drain() reports it
            self.send_error = e
        self._kick()

    async def drain(self, ignore_errors=False):
        """Waits until everything written so far is in the kernel's socket buffer."""
        while self.sender and not self.sender.done():
            await asyncio.shield(self.sender)
        if self.send_error and not ignore_errors:
            raise self.send_error

    async def close(self):
        try:
            self.obj.unwrap()  # close_notify; the peer's own is not waited for
        except (ssl.SSLError, ValueError):
            pass
        self._kick()
        try:
            await asyncio.wait_for(self.drain(ignore_errors=True), 2)
        except asyncio.TimeoutError:
            pass
        self.sock.close()


class Stream:
    """One CONNECT stream. Received DATA waits in `inbox` and is acknowledged only once
    consumed, so HTTP/2 flow control is the backpressure towards the sender."""

    def __init__(self, sid, headers=None):
        self.id, self.headers, self.reset = sid, headers, None
        self.inbox = asyncio.Queue()
        self.wake = asyncio.Event()  # the send window grew, or the stream died
        self.response = asyncio.get_running_loop().create_future()
        self.dead, self.on_die = False, None

    def die(self):
        if not self.dead:
            self.dead = True
            self.wake.set()
            self.inbox.put_nowait(DEAD)
            if self.on_die:
                self.on_die()
        if not self.response.done():
            self.response.set_result(None)


class Conn:
    """An h2 connection over a `Tls`: one reader task (`run`) feeds h2 and routes its events
    to the streams; any task may send (asyncio is single-threaded, so every h2 call and the
    flush after it happen without interleaving)."""

    def __init__(self, tls, client, validate=True):
        self.tls, self.streams = tls, {}
        self.settings_seen, self.error, self.on_request = asyncio.Event(), None, None
        # The server validates requests itself, to answer per stream as ztunnel does rather
        # than h2 failing the whole connection on a CONNECT carrying :scheme/:path.
        cfg = h2.config.H2Configuration(client_side=client, header_encoding="utf-8",
                                        validate_inbound_headers=client,
                                        validate_outbound_headers=validate)
        self.h2 = h2.connection.H2Connection(cfg)
        values = {S.INITIAL_WINDOW_SIZE: STREAM_WINDOW, S.MAX_FRAME_SIZE: MAX_FRAME}
        values.update({S.ENABLE_PUSH: 0, S.MAX_HEADER_LIST_SIZE: 16 << 10} if client else
                      {S.MAX_CONCURRENT_STREAMS: 200, S.MAX_HEADER_LIST_SIZE: 64 << 10})
        # Settings given as initial values are in force at once, but h2 derives two limits
        # from them only when a change is acknowledged: set those by hand.
        self.h2.local_settings = h2.settings.Settings(client=client, initial_values=values)
        self.h2.max_inbound_frame_size = MAX_FRAME
        self.h2.decoder.max_header_list_size = values[S.MAX_HEADER_LIST_SIZE]
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONN_WINDOW - 65535)  # connection-level window
        self.flush()

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.tls.write(data)

    async def run(self):
        try:
            while True:
                data = await self.tls.read(READ_CHUNK)
                if not data:
                    raise ConnectionError("connection closed by peer")
                try:
                    events = self.h2.receive_data(data)
                finally:
                    self.flush()  # SETTINGS/PING acks, or h2's GOAWAY on a protocol error
                for ev in events:
                    self.dispatch(ev)
                self.flush()
        except Exception as e:  # noqa: BLE001 - any end of the connection ends its streams
            self.error = e
        finally:
            for s in list(self.streams.values()):
                s.die()

    def dispatch(self, ev):
        # h2 reports END_STREAM as its own StreamEnded event, after the HEADERS or DATA one.
        E = h2.events
        s = self.streams.get(getattr(ev, "stream_id", None) or 0)
        if isinstance(ev, E.RequestReceived):
            self.streams[ev.stream_id] = s = Stream(ev.stream_id, ev.headers)
            self.on_request(s)
        elif isinstance(ev, E.ResponseReceived) and s and not s.response.done():
            s.response.set_result(ev.headers)
        elif isinstance(ev, E.DataReceived) and s:
            s.inbox.put_nowait((ev.data, ev.flow_controlled_length))
        elif isinstance(ev, E.DataReceived):  # a stream we forgot: still return the window
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, E.StreamEnded) and s:
            s.inbox.put_nowait(EOF)
        elif isinstance(ev, E.StreamReset) and s:
            s.reset = getattr(ev.error_code, "name", str(ev.error_code))
            s.die()
        elif isinstance(ev, E.RemoteSettingsChanged):  # may widen every stream's window
            self.settings_seen.set()
            for t in self.streams.values():
                t.wake.set()
        elif isinstance(ev, E.WindowUpdated):  # stream 0: the connection window
            for t in [s] if s else self.streams.values() if not ev.stream_id else []:
                t.wake.set()

    def open(self, headers):
        sid = self.h2.get_next_available_stream_id()
        self.streams[sid] = s = Stream(sid)
        self.h2.send_headers(sid, headers)
        self.flush()
        return s

    async def send(self, s, data):
        """Sends `data` on `s` within the peer's windows (stream, connection, frame size)."""
        view, off = memoryview(data), 0
        while off < len(view):
            try:
                window = min(self.h2.local_flow_control_window(s.id), self.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                raise StreamGone() from None
            if s.dead:
                raise StreamGone()
            if window <= 0:
                s.wake.clear()
                await s.wake.wait()
                continue
            n = min(window, len(view) - off)
            self.h2.send_data(s.id, bytes(view[off:off + n]))
            off += n
            self.flush()
            try:
                await self.tls.drain()
            except OSError:  # the connection broke under us
                raise StreamGone() from None

    def call(self, method, *args):
        """An h2 call on a stream the peer may have reset meanwhile: then it is a no-op."""
        try:
            getattr(self.h2, method)(*args)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.flush()

    def ack(self, s, n):
        self.call("acknowledge_received_data", n, s.id)
