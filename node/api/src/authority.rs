//! Repairs the `:authority` of HTTP/2 requests whose client put a whole URL there.
//!
//! etcdctl 3.4's per-endpoint commands (`endpoint status`, `endpoint health`, `endpoint hashkv`,
//! `move-leader`) send `:authority: http://127.0.0.1:2379` when given `http://` endpoints. etcd
//! ignores the scheme; h2 rejects the request as malformed and resets the stream with
//! PROTOCOL_ERROR. [`AuthorityFix`] sits between an accepted client connection and the HTTP/2
//! server and cuts such an authority down to `host:port` before h2 reads it.
//!
//! It reads only the client-to-server direction, and only as much of HTTP/2 as it must: the
//! frame boundaries and the HPACK blocks of HEADERS and CONTINUATION frames. HTTP/1 connections,
//! the server's bytes and every other frame pass through untouched. It is no HTTP/2 validator:
//! what is malformed goes on to h2, which answers it as it would without this layer.
//!
//! A connection is inspected up to its first header block. If that block's authority is well
//! formed, the connection is left alone from then on, so well-behaved clients pay nothing and
//! cannot be hurt by the rewriting. Otherwise that block and every later one are decoded with the
//! client's HPACK state and re-encoded as literals the server does not index, which keeps the
//! server's dynamic table empty and so consistent with what it is sent.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use loona_hpack::decoder::DecoderError;
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD_LEN: usize = 9;
/// The leading bytes of a frame head that give its length and type.
const FRAME_KIND_LEN: usize = 4;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// The initial SETTINGS_MAX_FRAME_SIZE: every peer accepts frames this large, whatever it
/// advertised.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The SETTINGS_HEADER_TABLE_SIZE the server advertises: hyper leaves h2 at the protocol's
/// initial value, so the client may not grow its HPACK table beyond it.
const SERVER_HEADER_TABLE_SIZE: usize = 4_096;
/// A header block whose frames grow past this is handed to h2 untouched, which refuses it: hyper
/// caps a header list at 16 KiB.
const MAX_HELD_BYTES: usize = 1 << 20;
/// Fields decoded past this header list size (counted as RFC 9113 counts it) are dropped. The
/// block sent on is still far over the server's limit, so the request is refused just as the
/// whole one would be, while a few bytes naming table entries cannot make us write gigabytes.
const MAX_REENCODED_LIST_SIZE: usize = 1 << 20;
/// An HPACK block that always fails to decode (index 0 is invalid), so the server answers a block
/// we could not decode with the COMPRESSION_ERROR the client earned.
const UNDECODABLE_BLOCK: &[u8] = &[0x80];

/// An accepted client connection whose HTTP/2 requests get a well-formed `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes the server has not read yet; they come before anything still in `inner`.
    pending: BytesMut,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            pending: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.pending.is_empty() {
                let n = buf.remaining().min(this.pending.len());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_done() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Read straight into the caller's buffer, so the frames that pass unchanged (DATA,
            // above all) are neither copied nor buffered here.
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == start {
                this.rewriter.finish(&mut this.pending);
                if this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let passed = this
                .rewriter
                .filter(&buf.filled()[start..], &mut this.pending);
            buf.set_filled(start + passed);
            if passed > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

enum Mode {
    /// Matching the HTTP/2 client preface; holds how many of its bytes matched so far.
    Preface(usize),
    /// Walking HTTP/2 frames.
    Frames,
    /// Nothing more to inspect: HTTP/1, a well-formed first request, or a stream h2 will reject.
    Done,
}

/// The client-to-server byte stream's state: where the frame boundaries are, the header block
/// being collected, and the client's HPACK table.
struct Rewriter {
    mode: Mode,
    /// Set once a request named a URL as its authority: every block is re-encoded from then on.
    reencoding: bool,
    /// The start of a frame whose kind is not known yet, or of a frame joining `held`.
    head: [u8; FRAME_HEAD_LEN],
    head_len: usize,
    /// Bytes of the current frame, head and payload, still to come.
    frame_left: usize,
    /// The flags of the current frame, if it is held.
    frame_flags: u8,
    /// The raw HEADERS and CONTINUATION frames of the header block being collected.
    held: Vec<u8>,
    decoder: Decoder<'static>,
    /// Scratch space: the block's HPACK fragment as the client sent it, and re-encoded.
    fragment: Vec<u8>,
    block: Vec<u8>,
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(SERVER_HEADER_TABLE_SIZE);
        Self {
            mode: Mode::Preface(0),
            reencoding: false,
            head: [0; FRAME_HEAD_LEN],
            head_len: 0,
            frame_left: 0,
            frame_flags: 0,
            held: Vec::new(),
            decoder,
            fragment: Vec::new(),
            block: Vec::new(),
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.mode, Mode::Done)
    }

    /// Takes the next bytes from the client. Returns how many leading bytes of `input` go to the
    /// server unchanged; the rest was taken in, and what replaces it was appended to `out`.
    fn filter(&mut self, input: &[u8], out: &mut BytesMut) -> usize {
        let passed = self.pass(input);
        let mut rest = &input[passed..];
        while !rest.is_empty() {
            let taken = self.take(rest, out);
            rest = &rest[taken..];
            let unchanged = self.pass(rest);
            out.extend_from_slice(&rest[..unchanged]);
            rest = &rest[unchanged..];
        }
        passed
    }

    /// The client closed its side: whatever was held goes on as it came.
    fn finish(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.held);
        out.extend_from_slice(&self.head[..self.head_len]);
        self.stop();
    }

    /// Returns the length of the longest prefix of `input` that passes unchanged, and moves past
    /// it.
    fn pass(&mut self, input: &[u8]) -> usize {
        let mut passed = 0;
        loop {
            let rest = &input[passed..];
            if rest.is_empty() {
                return passed;
            }
            match self.mode {
                Mode::Done => return input.len(),
                Mode::Preface(matched) => {
                    let expected = &PREFACE[matched..];
                    let n = expected.len().min(rest.len());
                    if rest[..n] != expected[..n] {
                        self.stop();
                        return input.len();
                    }
                    passed += n;
                    self.mode = if matched + n == PREFACE.len() {
                        Mode::Frames
                    } else {
                        Mode::Preface(matched + n)
                    };
                }
                Mode::Frames => {
                    if !self.held.is_empty() || self.head_len > 0 {
                        return passed;
                    }
                    if self.frame_left > 0 {
                        let n = self.frame_left.min(rest.len());
                        self.frame_left -= n;
                        passed += n;
                        continue;
                    }
                    if rest.len() < FRAME_KIND_LEN || rest[3] == HEADERS {
                        return passed;
                    }
                    self.frame_left = FRAME_HEAD_LEN + payload_len(rest);
                }
            }
        }
    }

    /// Takes in at least one byte of `input`, which `pass` declined, appending to `out` what it
    /// releases. Returns how many bytes it took.
    fn take(&mut self, input: &[u8], out: &mut BytesMut) -> usize {
        if self.frame_left > 0 {
            let n = self.frame_left.min(input.len());
            self.held.extend_from_slice(&input[..n]);
            self.frame_left -= n;
            if self.frame_left == 0 && self.frame_flags & END_HEADERS != 0 {
                self.finish_block(out);
            }
            return n;
        }

        let n = (FRAME_HEAD_LEN - self.head_len).min(input.len());
        self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
        self.head_len += n;
        if self.head_len < FRAME_KIND_LEN {
            return n;
        }
        let in_block = !self.held.is_empty();
        if !in_block && self.head[3] != HEADERS {
            // Only a frame cut short by the end of an earlier read ends up here.
            out.extend_from_slice(&self.head[..self.head_len]);
            self.frame_left = FRAME_HEAD_LEN + payload_len(&self.head) - self.head_len;
            self.head_len = 0;
            return n;
        }
        if self.head_len < FRAME_HEAD_LEN {
            return n;
        }

        let len = payload_len(&self.head);
        let joins_block = !in_block
            || (self.head[3] == CONTINUATION && self.head[5..] == self.held[5..FRAME_HEAD_LEN]);
        if !joins_block || self.held.len() + FRAME_HEAD_LEN + len > MAX_HELD_BYTES {
            // h2 refuses this sequence before it decodes anything; let it see what came.
            out.extend_from_slice(&self.held);
            out.extend_from_slice(&self.head);
            self.stop();
            return n;
        }
        self.held.extend_from_slice(&self.head);
        self.head_len = 0;
        self.frame_left = len;
        self.frame_flags = self.head[4];
        if len == 0 && self.frame_flags & END_HEADERS != 0 {
            self.finish_block(out);
        }
        n
    }

    /// Sends on the complete header block in `held`.
    fn finish_block(&mut self, out: &mut BytesMut) {
        let mut held = std::mem::take(&mut self.held);
        let Some(first) = collect_fragment(&held, &mut self.fragment) else {
            out.extend_from_slice(&held);
            self.stop();
            return;
        };
        self.block.clear();
        let repaired = reencode(&mut self.decoder, &self.fragment, &mut self.block);
        let stream = &held[5..9];
        match repaired {
            // Until something is repaired the server's HPACK table matches the client's, so the
            // original block means to the server what it meant to us.
            Ok(false) | Err(_) if !self.reencoding => {
                out.extend_from_slice(&held);
                self.stop();
            }
            Err(_) => {
                write_header_block(out, stream, &first, UNDECODABLE_BLOCK);
                self.stop();
            }
            Ok(_) => {
                self.reencoding = true;
                write_header_block(out, stream, &first, &self.block);
                held.clear();
                self.held = held;
            }
        }
    }

    fn stop(&mut self) {
        self.mode = Mode::Done;
        self.head_len = 0;
        self.held = Vec::new();
        self.fragment = Vec::new();
        self.block = Vec::new();
        self.decoder = Decoder::new();
    }
}

/// Fields of a HEADERS frame that its re-encoded block keeps.
struct FirstFrame {
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
}

/// Fills `fragment` with the HPACK block carried by the frames in `held` (a HEADERS frame and its
/// CONTINUATION frames). Returns `None` if the HEADERS frame's padding is malformed.
fn collect_fragment(held: &[u8], fragment: &mut Vec<u8>) -> Option<FirstFrame> {
    fragment.clear();
    let flags = held[4];
    let mut payload = &held[FRAME_HEAD_LEN..FRAME_HEAD_LEN + payload_len(held)];
    let mut rest = &held[FRAME_HEAD_LEN + payload.len()..];
    let padding = if flags & PADDED != 0 {
        let (&padding, after) = payload.split_first()?;
        payload = after;
        usize::from(padding)
    } else {
        0
    };
    let priority = if flags & PRIORITY != 0 {
        let (priority, after) = payload.split_first_chunk::<PRIORITY_LEN>()?;
        payload = after;
        Some(*priority)
    } else {
        None
    };
    fragment.extend_from_slice(&payload[..payload.len().checked_sub(padding)?]);
    while !rest.is_empty() {
        let len = payload_len(rest);
        fragment.extend_from_slice(&rest[FRAME_HEAD_LEN..FRAME_HEAD_LEN + len]);
        rest = &rest[FRAME_HEAD_LEN + len..];
    }
    Some(FirstFrame {
        end_stream: flags & END_STREAM != 0,
        priority,
    })
}

/// Decodes `fragment` and writes its fields to `block` as literals without indexing, with the
/// authority repaired. Returns whether the authority needed it.
fn reencode(
    decoder: &mut Decoder<'static>,
    fragment: &[u8],
    block: &mut Vec<u8>,
) -> Result<bool, DecoderError> {
    let mut repaired = false;
    let mut list_size = 0;
    decoder.decode_with_cb(fragment, |name, value| {
        let value = match repair_authority(&name, &value) {
            Some(host) => {
                repaired = true;
                Cow::Borrowed(host)
            }
            None => value,
        };
        if list_size <= MAX_REENCODED_LIST_SIZE {
            encode_literal(block, &name, &value);
        }
        list_size += name.len() + value.len() + 32;
    })?;
    Ok(repaired)
}

/// The `host:port` of an `:authority` field that holds a URL instead.
fn repair_authority<'v>(name: &[u8], value: &'v [u8]) -> Option<&'v [u8]> {
    if name != b":authority" {
        return None;
    }
    let without_scheme = [&b"http://"[..], b"https://"]
        .iter()
        .find(|scheme| {
            value.len() >= scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme)
        })
        .map_or(value, |scheme| &value[scheme.len()..]);
    let host = without_scheme
        .split(|&b| b == b'/')
        .next()
        .unwrap_or(without_scheme);
    (host.len() != value.len()).then_some(host)
}

/// RFC 7541 §6.2.2, literal header field without indexing, new name; no Huffman coding.
fn encode_literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x00);
    for string in [name, value] {
        encode_integer(block, 0x00, 7, string.len());
        block.extend_from_slice(string);
    }
}

/// RFC 7541 §5.1: `value` in a `prefix_bits`-bit prefix under the high bits in `flags`.
fn encode_integer(block: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: usize) {
    let limit = (1usize << prefix_bits) - 1;
    if value < limit {
        block.push(flags | value as u8);
        return;
    }
    block.push(flags | limit as u8);
    let mut rest = value - limit;
    while rest >= 0x80 {
        block.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    block.push(rest as u8);
}

/// Writes `block` as a HEADERS frame and as many CONTINUATION frames as it needs, unpadded.
fn write_header_block(out: &mut BytesMut, stream: &[u8], first: &FirstFrame, block: &[u8]) {
    let priority_len = if first.priority.is_some() {
        PRIORITY_LEN
    } else {
        0
    };
    let (chunk, mut rest) = block.split_at(block.len().min(MAX_FRAME_PAYLOAD - priority_len));
    let mut flags = 0;
    if first.end_stream {
        flags |= END_STREAM;
    }
    if first.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    write_frame_head(out, priority_len + chunk.len(), HEADERS, flags, stream);
    if let Some(priority) = &first.priority {
        out.extend_from_slice(priority);
    }
    out.extend_from_slice(chunk);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        write_frame_head(out, chunk.len(), CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

fn write_frame_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: &[u8]) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(stream);
}

/// The payload length in a frame head (of which at least the first three bytes are given).
fn payload_len(head: &[u8]) -> usize {
    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;

    use loona_hpack::Encoder;

    const SETTINGS: u8 = 0x4;
    const DATA: u8 = 0x0;

    /// What etcdctl 3.4.23 sent for `endpoint status --endpoints=http://127.0.0.1:24479`: the
    /// preface, SETTINGS, WINDOW_UPDATE, a Huffman-coded HEADERS block and the request's DATA.
    const ETCDCTL_ENDPOINT_STATUS: &[u8] = &[
        0x50, 0x52, 0x49, 0x20, 0x2a, 0x20, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x32, 0x2e, 0x30, 0x0d,
        0x0a, 0x0d, 0x0a, 0x53, 0x4d, 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x77,
        0x01, 0x04, 0x00, 0x00, 0x00, 0x01, 0x83, 0x86, 0x45, 0x97, 0x60, 0xa9, 0x24, 0x88, 0x2d,
        0x9d, 0xcb, 0x65, 0x71, 0xaf, 0xa0, 0x66, 0xa9, 0x25, 0xa8, 0x75, 0x10, 0xac, 0x6e, 0x48,
        0xd3, 0x6a, 0x3f, 0x41, 0x90, 0x9d, 0x29, 0xae, 0xe3, 0x0c, 0x04, 0x4e, 0xae, 0x05, 0xc0,
        0xb8, 0x6e, 0x09, 0xa6, 0x9d, 0x7f, 0x5f, 0x8b, 0x1d, 0x75, 0xd0, 0x62, 0x0d, 0x26, 0x3d,
        0x4c, 0x4d, 0x65, 0x64, 0x7a, 0x8b, 0x9a, 0xca, 0xc8, 0xb4, 0xc7, 0x60, 0x2b, 0xb2, 0xca,
        0xec, 0xff, 0x40, 0x02, 0x74, 0x65, 0x86, 0x4d, 0x83, 0x35, 0x05, 0xb1, 0x1f, 0x40, 0x89,
        0x9a, 0xca, 0xc8, 0xb2, 0x4d, 0x49, 0x4f, 0x6a, 0x7f, 0x86, 0x69, 0xf7, 0x84, 0xeb, 0xc0,
        0xb7, 0x40, 0x8d, 0x25, 0x06, 0x2d, 0x49, 0x58, 0x75, 0x99, 0x6e, 0xe5, 0xb1, 0x06, 0x3d,
        0x5f, 0x03, 0x33, 0x2e, 0x34, 0x00, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00,
    ];

    /// A client whose bytes arrive in reads of at most `chunk` bytes.
    struct Client {
        chunks: VecDeque<Vec<u8>>,
    }

    impl Client {
        fn new(bytes: &[u8], chunk: usize) -> Self {
            Self {
                chunks: bytes.chunks(chunk).map(<[u8]>::to_vec).collect(),
            }
        }
    }

    impl AsyncRead for Client {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if let Some(chunk) = this.chunks.front_mut() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                chunk.drain(..n);
                if chunk.is_empty() {
                    this.chunks.pop_front();
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// What the server reads when the client's bytes come `chunk` at a time and the server reads
    /// `read` at a time.
    fn server_reads(client_bytes: &[u8], chunk: usize, read: usize) -> Vec<u8> {
        let mut conn = AuthorityFix::new(Client::new(client_bytes, chunk));
        let mut seen = Vec::new();
        let mut space = vec![0; read];
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut conn).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return seen,
                Poll::Ready(Ok(())) => seen.extend_from_slice(buf.filled()),
                other => panic!("unexpected read result {other:?}"),
            }
        }
    }

    /// What the server reads, checked to be the same however the bytes are cut into reads.
    fn server_sees(client_bytes: &[u8]) -> Vec<u8> {
        let whole = server_reads(client_bytes, client_bytes.len().max(1), 1 << 16);
        for (chunk, read) in [(1, 1 << 16), (7, 5), (4096, 3), (100, 16_384)] {
            assert_eq!(
                server_reads(client_bytes, chunk, read),
                whole,
                "client chunks of {chunk}, server reads of {read}"
            );
        }
        whole
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame_head(&mut out, payload.len(), kind, flags, &stream.to_be_bytes());
        out.extend_from_slice(payload);
        out.to_vec()
    }

    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    /// Splits what the server read into its preface and frames.
    fn frames(server_bytes: &[u8]) -> Vec<Frame> {
        assert_eq!(&server_bytes[..PREFACE.len()], PREFACE);
        let mut rest = &server_bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len = payload_len(rest);
            frames.push(Frame {
                kind: rest[3],
                flags: rest[4],
                stream: u32::from_be_bytes(rest[5..9].try_into().unwrap()),
                payload: rest[FRAME_HEAD_LEN..FRAME_HEAD_LEN + len].to_vec(),
            });
            rest = &rest[FRAME_HEAD_LEN + len..];
        }
        frames
    }

    type Fields = Vec<(String, String)>;

    /// Decodes the header blocks the server reads, as a fresh server would, checking that each
    /// fits a frame, that its frames are HEADERS then CONTINUATION of one stream, and that the
    /// block uses no dynamic table entry of the server's.
    fn header_blocks(frames: &[Frame]) -> Vec<(u32, Fields)> {
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut block: Option<(u32, Vec<u8>)> = None;
        for frame in frames {
            assert!(frame.payload.len() <= MAX_FRAME_PAYLOAD);
            match (frame.kind, &mut block) {
                (HEADERS, None) => {
                    assert_eq!(frame.flags & PADDED, 0);
                    let skip = if frame.flags & PRIORITY != 0 { 5 } else { 0 };
                    block = Some((frame.stream, frame.payload[skip..].to_vec()));
                }
                (CONTINUATION, Some((stream, fragment))) => {
                    assert_eq!(frame.stream, *stream);
                    fragment.extend_from_slice(&frame.payload);
                }
                (_, None) => continue,
                (kind, Some(_)) => panic!("frame type {kind} inside a header block"),
            }
            if frame.flags & END_HEADERS != 0 {
                let (stream, fragment) = block.take().unwrap();
                let fields = decoder.decode(&fragment).expect("server decodes the block");
                let fields = fields
                    .into_iter()
                    .map(|(n, v)| (utf8(n), utf8(v)))
                    .collect();
                blocks.push((stream, fields));
            }
        }
        assert!(block.is_none(), "a header block was left open");
        blocks
    }

    fn utf8(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn request(authority: &str) -> Fields {
        fields(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.KV/Range"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ])
    }

    fn literal_block(fields: &Fields) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            encode_literal(&mut block, name.as_bytes(), value.as_bytes());
        }
        block
    }

    /// An HPACK block from an encoder that indexes every field, as a client's would.
    fn indexed_block(encoder: &mut Encoder<'_>, fields: &Fields) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn client_start() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0x10, 0, 0]));
        bytes
    }

    #[test]
    fn etcdctl_url_authority_reaches_the_server_as_host_and_port() {
        let seen = frames(&server_sees(ETCDCTL_ENDPOINT_STATUS));
        let blocks = header_blocks(&seen);
        assert_eq!(blocks.len(), 1);
        let (stream, fields) = &blocks[0];
        assert_eq!(*stream, 1);
        let authority: Vec<_> = fields.iter().filter(|(n, _)| n == ":authority").collect();
        assert_eq!(
            authority,
            [&(":authority".into(), "127.0.0.1:24479".into())]
        );
        let path = fields.iter().find(|(n, _)| n == ":path").unwrap();
        assert_eq!(path.1, "/etcdserverpb.Maintenance/Status");
        let names: Vec<_> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                ":method",
                ":scheme",
                ":path",
                ":authority",
                "content-type",
                "user-agent",
                "te",
                "grpc-timeout",
                "client-api-version"
            ]
        );

        // Everything but the header block is passed on as etcdctl sent it.
        let sent = frames(ETCDCTL_ENDPOINT_STATUS);
        let unchanged = |frames: &[Frame]| -> Vec<(u8, u8, u32, Vec<u8>)> {
            frames
                .iter()
                .filter(|f| f.kind != HEADERS)
                .map(|f| (f.kind, f.flags, f.stream, f.payload.clone()))
                .collect()
        };
        assert_eq!(unchanged(&seen), unchanged(&sent));
        assert_eq!(seen.iter().filter(|f| f.kind == DATA).count(), 1);
    }

    #[test]
    fn later_blocks_decode_against_the_clients_table() {
        let mut encoder = Encoder::new();
        let mut bytes = client_start();
        for stream in [1, 3, 5] {
            let block = indexed_block(&mut encoder, &request("https://127.0.0.1:2379/"));
            bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
            bytes.extend(frame(DATA, END_STREAM, stream, b"\0\0\0\0\x02\x0a\x00"));
        }
        let seen = frames(&server_sees(&bytes));
        let blocks = header_blocks(&seen);
        let expected: Vec<_> = [1, 3, 5]
            .into_iter()
            .map(|s| (s, request("127.0.0.1:2379")))
            .collect();
        assert_eq!(blocks, expected);
        let data: Vec<_> = seen.iter().filter(|f| f.kind == DATA).collect();
        assert_eq!(data.len(), 3);
        assert!(data.iter().all(|f| f.payload == b"\0\0\0\0\x02\x0a\x00"));
    }

    #[test]
    fn padding_is_dropped_and_priority_and_end_stream_are_kept() {
        let block = literal_block(&request("http://[::1]:2379"));
        let (first, second) = block.split_at(20);
        let mut payload = vec![3];
        payload.extend_from_slice(&[0x80, 0, 0, 1, 200]);
        payload.extend_from_slice(first);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut bytes = client_start();
        bytes.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, second));

        let seen = frames(&server_sees(&bytes));
        assert_eq!(header_blocks(&seen), [(1, request("[::1]:2379"))]);
        let headers = seen.iter().find(|f| f.kind == HEADERS).unwrap();
        assert_eq!(headers.flags, PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(headers.payload[..5], [0x80, 0, 0, 1, 200]);
    }

    #[test]
    fn a_block_longer_than_a_frame_is_split_into_continuations() {
        let mut huge = request("http://127.0.0.1:2379");
        huge.push(("x-big".into(), "v".repeat(40_000)));
        let block = literal_block(&huge);
        let mut bytes = client_start();
        // A frame of the full size a server may allow, then an empty CONTINUATION that ends it.
        bytes.extend(frame(HEADERS, 0, 7, &block));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 7, &[]));

        let seen = frames(&server_sees(&bytes));
        let mut expected = huge;
        expected[3].1 = "127.0.0.1:2379".into();
        assert_eq!(header_blocks(&seen), [(7, expected)]);
        let kinds: Vec<_> = seen.iter().map(|f| (f.kind, f.flags)).collect();
        assert_eq!(
            kinds,
            [
                (SETTINGS, 0),
                (HEADERS, 0),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS)
            ]
        );
    }

    #[test]
    fn a_well_formed_first_request_leaves_the_connection_untouched() {
        let mut encoder = Encoder::new();
        let mut bytes = client_start();
        let block = indexed_block(&mut encoder, &request("127.0.0.1:2379"));
        bytes.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &{
            let mut p = vec![1];
            p.extend_from_slice(&block);
            p.push(0);
            p
        }));
        bytes.extend(frame(DATA, END_STREAM, 1, b"payload"));
        let block = indexed_block(&mut encoder, &request("http://127.0.0.1:2379"));
        bytes.extend(frame(HEADERS, END_HEADERS, 3, &block));
        assert_eq!(server_sees(&bytes), bytes);
    }

    #[test]
    fn http1_passes_through() {
        let request = b"GET /health HTTP/1.1\r\nHost: http://127.0.0.1:2379\r\n\r\n";
        assert_eq!(server_sees(request), request);
        let almost_preface = b"PRI * HTTP/1.1\r\n\r\n";
        assert_eq!(server_sees(almost_preface), almost_preface);
    }

    #[test]
    fn table_size_updates_from_the_client_evict_entries() {
        let mut bytes = client_start();
        // Literal with incremental indexing, new name: x-a: 1 becomes dynamic entry 62.
        let mut first = literal_block(&request("http://h:1"));
        first.extend_from_slice(&[0x40, 3, b'x', b'-', b'a', 1, b'1']);
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &first));
        // Index 62 refers to x-a: 1.
        let mut second = literal_block(&request("http://h:1"));
        second.push(0x80 | 62);
        bytes.extend(frame(HEADERS, END_HEADERS, 3, &second));
        let blocks = header_blocks(&frames(&server_sees(&bytes)));
        let mut expected = request("h:1");
        expected.push(("x-a".into(), "1".into()));
        assert_eq!(blocks[1], (3, expected));

        // Shrinking the table to nothing and back empties it, so index 62 no longer exists, and
        // the server is sent a block it fails to decode.
        let mut third = vec![0x20, 0x3f, 0xe1, 0x1f];
        third.extend(literal_block(&request("http://h:1")));
        third.push(0x80 | 62);
        bytes.extend(frame(HEADERS, END_HEADERS, 5, &third));
        let seen = frames(&server_sees(&bytes));
        let last = seen.last().unwrap();
        assert_eq!((last.kind, last.stream), (HEADERS, 5));
        assert_eq!(last.payload, UNDECODABLE_BLOCK);
    }

    #[test]
    fn a_table_size_beyond_the_servers_setting_is_refused() {
        let mut bytes = client_start();
        bytes.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &literal_block(&request("http://h:1")),
        ));
        // Dynamic table size update to 4097.
        let mut second = vec![0x3f, 0xe2, 0x1f];
        second.extend(literal_block(&request("http://h:1")));
        bytes.extend(frame(HEADERS, END_HEADERS, 3, &second));
        let seen = frames(&server_sees(&bytes));
        assert_eq!(seen.last().unwrap().payload, UNDECODABLE_BLOCK);
    }

    #[test]
    fn a_block_cut_by_another_frame_is_passed_on_as_sent() {
        let mut bytes = client_start();
        let block = literal_block(&request("http://127.0.0.1:2379"));
        bytes.extend(frame(HEADERS, 0, 1, &block));
        bytes.extend(frame(DATA, 0, 1, b"x"));
        assert_eq!(server_sees(&bytes), bytes);

        // The same for a CONTINUATION on another stream, after a repaired block.
        let mut bytes = client_start();
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &block));
        bytes.extend(frame(HEADERS, 0, 3, &block));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 5, &[]));
        let seen = server_sees(&bytes);
        let seen_frames = frames(&seen);
        assert_eq!(seen_frames.len(), 4);
        let tail = frame(HEADERS, 0, 3, &block)
            .into_iter()
            .chain(frame(CONTINUATION, END_HEADERS, 5, &[]))
            .collect::<Vec<_>>();
        assert!(seen.ends_with(&tail));
    }

    #[test]
    fn a_connection_closed_inside_a_block_passes_on_what_came() {
        let mut bytes = client_start();
        let block = literal_block(&request("http://127.0.0.1:2379"));
        bytes.extend(&frame(HEADERS, END_HEADERS, 1, &block)[..20]);
        assert_eq!(server_sees(&bytes), bytes);
    }

    #[test]
    fn repaired_authorities() {
        let cases: &[(&str, Option<&str>)] = &[
            ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("HTTPS://etcd-0.etcd:2379", Some("etcd-0.etcd:2379")),
            ("127.0.0.1:2379/", Some("127.0.0.1:2379")),
            ("http://[::1]:2379/v3/kv", Some("[::1]:2379")),
            ("127.0.0.1:2379", None),
            ("localhost", None),
        ];
        for &(value, expected) in cases {
            let repaired = repair_authority(b":authority", value.as_bytes());
            assert_eq!(repaired, expected.map(str::as_bytes), "{value}");
        }
        assert_eq!(repair_authority(b"host", b"http://h:1"), None);
    }

    #[test]
    fn integers_follow_rfc_7541_examples() {
        // RFC 7541 C.1.1 to C.1.3.
        let mut block = Vec::new();
        encode_integer(&mut block, 0, 5, 10);
        encode_integer(&mut block, 0, 5, 1337);
        encode_integer(&mut block, 0, 8, 42);
        assert_eq!(block, [0x0a, 0x1f, 0x9a, 0x0a, 0x2a]);
    }
}
