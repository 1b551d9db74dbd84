//! A small HTTP/1.1 file server on loopback for the download tests: directory listings, Range
//! requests, and injected faults (a dropped connection, a hang, an error status).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fault injected on a path.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Close the connection after this many body bytes, the first `times` times.
    DropAfter(usize, usize),
    /// Answer with this status.
    Status(u16),
    /// Accept and never answer.
    Hang,
}

pub struct Server {
    pub url: String,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(root: PathBuf, faults: HashMap<String, Fault>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(faults));
        let (s, l) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (root, faults, log) = (root.clone(), faults.clone(), l.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &root, &faults, &log);
                });
            }
        });
        Server {
            url: format!("http://{addr}"),
            stop,
            addr,
            log,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn handle(
    mut conn: TcpStream,
    root: &std::path::Path,
    faults: &Mutex<HashMap<String, Fault>>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range_start: Option<u64> = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse().ok();
        }
    }
    log.lock().unwrap().push(format!(
        "GET {path}{}",
        range_start
            .map(|r| format!(" from {r}"))
            .unwrap_or_default()
    ));
    let fault = faults.lock().unwrap().get(&path).cloned();
    match fault {
        Some(Fault::Status(code)) => {
            return write!(
                conn,
                "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        Some(Fault::Hang) => {
            std::thread::sleep(Duration::from_secs(5));
            return Ok(());
        }
        _ => {}
    }
    let fs_path = root.join(path.trim_start_matches('/'));
    if fs_path.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(&fs_path)?
            .filter_map(|e| e.ok())
            .map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() {
                    format!("{n}/")
                } else {
                    n
                }
            })
            .collect();
        names.sort();
        let body: String = std::iter::once("<html><body><a href=\"../\">Parent</a>\n".to_string())
            .chain(names.iter().map(|n| format!("<a href=\"{n}\">{n}</a>\n")))
            .chain(std::iter::once("</body></html>\n".to_string()))
            .collect();
        return write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }
    let Ok(mut data) = std::fs::read(&fs_path) else {
        return write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    let full = data.len();
    let status = match range_start {
        Some(start) if (start as usize) < full => {
            data.drain(..start as usize);
            format!(
                "206 Partial Content\r\nContent-Range: bytes {start}-{}/{full}",
                full - 1
            )
        }
        Some(_) => {
            return write!(
            conn,
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        }
        None => "200 OK".to_string(),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    )?;
    if let Some(Fault::DropAfter(n, times)) = fault {
        if times > 0 {
            let mut f = faults.lock().unwrap();
            if times == 1 {
                f.remove(&path);
            } else {
                f.insert(path.clone(), Fault::DropAfter(n, times - 1));
            }
            conn.write_all(&data[..n.min(data.len())])?;
            conn.flush()?;
            return conn.shutdown(std::net::Shutdown::Both);
        }
    }
    conn.write_all(&data)?;
    let mut sink = [0u8; 16];
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = conn.read(&mut sink);
    Ok(())
}
