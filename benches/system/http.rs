//! A small HTTP/1.1 client over one keep-alive connection, enough for the benchmark:
//! GET and POST with a JSON body, responses with `Content-Length` or chunked bodies,
//! and an event stream read chunk by chunk as it arrives.
//!
//! It is written here rather than taken from hyper so that the load generator costs
//! little CPU on a 2-core machine that also runs the server.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| panic!("invalid JSON ({error}): {}", self.text()))
    }
}

pub struct Connection {
    stream: TcpStream,
    /// Bytes read past the end of the last response.
    buffer: Vec<u8>,
}

impl Connection {
    pub async fn connect(address: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buffer: Vec::with_capacity(64 * 1024) })
    }

    pub async fn get(&mut self, path: &str) -> io::Result<Response> {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n")).await?;
        self.read_response().await
    }

    pub async fn post(&mut self, path: &str, body: &str) -> io::Result<Response> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(&request).await?;
        self.read_response().await
    }

    async fn send(&mut self, request: &str) -> io::Result<()> {
        self.stream.write_all(request.as_bytes()).await
    }

    /// Reads more bytes into the buffer; fails at the end of the stream.
    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let read = self.stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }

    /// Reads the status line and headers; returns the status and how the body is framed.
    async fn read_head(&mut self) -> io::Result<(u16, Framing)> {
        let end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
        self.buffer.drain(..end + 4);

        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line in {head:?}")))?;
        let mut framing = Framing::Length(0);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                framing = Framing::Length(value.parse().unwrap_or(0));
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                framing = Framing::Chunked;
            }
        }
        Ok((status, framing))
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let (status, framing) = self.read_head().await?;
        let body = match framing {
            Framing::Length(length) => {
                while self.buffer.len() < length {
                    self.fill().await?;
                }
                self.buffer.drain(..length).collect()
            }
            Framing::Chunked => {
                let mut body = Vec::new();
                while let Some(chunk) = self.next_chunk().await? {
                    body.extend_from_slice(&chunk);
                }
                body
            }
        };
        Ok(Response { status, body })
    }

    /// Sends a GET for an event stream and reads its head; read it with [`next_chunk`].
    ///
    /// [`next_chunk`]: Self::next_chunk
    pub async fn open_stream(&mut self, path: &str) -> io::Result<u16> {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")).await?;
        let (status, framing) = self.read_head().await?;
        if !matches!(framing, Framing::Chunked) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the event stream is not chunked"));
        }
        Ok(status)
    }

    /// Returns the next chunk of a chunked body, or `None` after the last one.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let line_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n") {
                break end;
            }
            self.fill().await?;
        };
        let size_text = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {size_text:?}")))?;
        self.buffer.drain(..line_end + 2);

        while self.buffer.len() < size + 2 {
            self.fill().await?;
        }
        let chunk: Vec<u8> = self.buffer.drain(..size).collect();
        self.buffer.drain(..2);
        Ok((size > 0).then_some(chunk))
    }
}

enum Framing {
    Length(usize),
    Chunked,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}
