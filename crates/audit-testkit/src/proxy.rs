//! A small TCP proxy that end-to-end tests put between the client and PostgreSQL or Redis to simulate network
//! failures on demand: refused connections, cut connections, a network that swallows everything, and a connection
//! lost while a PostgreSQL `COMMIT` is in flight (the one failure whose outcome the client cannot know).
//!
//! Only tokio is needed. Everything the proxy starts stops when the [`TcpProxy`] is dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic. Switch with [`TcpProxy::set_mode`] at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways.
    Pass,
    /// Close every new connection as soon as it is accepted; existing connections continue.
    Refuse,
    /// Drop every current connection now, and close new ones like `Refuse` until the mode changes.
    Cut,
    /// A network that has gone silent. Connections accepted meanwhile are read but never reach the upstream, even
    /// after the mode changes (a peer that accepted and never answers: a hung server, or a pooler waiting for a
    /// dead backend). Connections that were open are held: nothing is read or forwarded either way, so their bytes
    /// wait in the kernel's buffers, like packets a partition delays, and flow again, in order, once the mode
    /// returns to `Pass` (a healed network loses nothing that TCP acknowledged).
    Blackhole,
}

#[derive(Debug, Clone, Copy)]
struct Control {
    mode: ProxyMode,
    /// Incremented each time `Cut` is set, so connections opened before it know they must go.
    cuts: u64,
}

/// A TCP proxy on `127.0.0.1:<ephemeral>` in front of one upstream address.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    control: watch::Sender<Control>,
    active: Arc<AtomicUsize>,
    commits: Arc<CommitCuts>,
    accept_task: JoinHandle<()>,
}

/// Lost-COMMIT injection shared by every connection of a proxy: how many COMMITs are still to be cut, and how many
/// were cut.
#[derive(Debug, Default)]
struct CommitCuts {
    armed: AtomicUsize,
    done: AtomicUsize,
}

impl CommitCuts {
    /// Takes one armed cut, if any (several connections may see a COMMIT at once; only `armed` of them win).
    fn claim(&self) -> bool {
        self.armed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

/// The simple-query message tokio-postgres sends for `Transaction::commit`: `'Q'`, Int32 length (4 + 7), `COMMIT\0`.
const COMMIT_QUERY: &[u8] = b"Q\x00\x00\x00\x0bCOMMIT\x00";

/// PostgreSQL's ReadyForQuery message header (`'Z'`, Int32 length 5); the status byte follows. It ends the server's
/// answer to a simple query.
const READY_FOR_QUERY: &[u8] = b"Z\x00\x00\x00\x05";

/// How long a cut connection waits for the server to finish the COMMIT before closing anyway.
const COMMIT_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl TcpProxy {
    /// Starts a proxy to `upstream` in `Pass` mode. Panics if no loopback port can be bound, which in a test is
    /// the most useful outcome; use [`TcpProxy::try_start`] to handle it.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        Self::try_start(upstream).await.expect("bind the test proxy on 127.0.0.1:0")
    }

    /// Starts a proxy to `upstream` in `Pass` mode.
    pub async fn try_start(upstream: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (control, rx) = watch::channel(Control { mode: ProxyMode::Pass, cuts: 0 });
        let active = Arc::new(AtomicUsize::new(0));
        let commits = Arc::new(CommitCuts::default());
        let accept_task = tokio::spawn(accept_loop(listener, upstream, rx, active.clone(), commits.clone()));
        tracing::debug!(%addr, %upstream, "test proxy started");
        Ok(TcpProxy { addr, upstream, control, active, commits, accept_task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.control.borrow().mode
    }

    /// Switches mode; `Cut` drops every current connection before this returns to the caller's next await.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.control.send_modify(|c| {
            c.mode = mode;
            if mode == ProxyMode::Cut {
                c.cuts += 1;
            }
        });
        tracing::debug!(addr = %self.addr, ?mode, "test proxy mode changed");
    }

    /// Connections currently held open by the proxy (client side).
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Arms the lost-COMMIT failure for the next `n` PostgreSQL `COMMIT`s on any passing connection: the proxy
    /// forwards the client's `COMMIT` to the server, waits until the server has answered it (so the transaction's
    /// fate is decided server-side), swallows that answer and closes both sides. The client sees its connection
    /// drop during COMMIT without learning whether it committed. Other traffic keeps passing; the mode is left
    /// as it was. Armed cuts left unused stay armed; [`TcpProxy::disarm_commit_cuts`] removes them.
    pub fn cut_next_commits(&self, n: usize) {
        self.commits.armed.fetch_add(n, Ordering::SeqCst);
        tracing::debug!(addr = %self.addr, n, "test proxy armed to cut COMMITs");
    }

    /// Removes armed COMMIT cuts that have not happened yet; returns how many there were.
    pub fn disarm_commit_cuts(&self) -> usize {
        self.commits.armed.swap(0, Ordering::SeqCst)
    }

    /// How many COMMITs the proxy has cut so far (forwarded, answered by the server, answer not delivered).
    pub fn commits_cut(&self) -> usize {
        self.commits.done.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Dropping `control` closes the channel, which ends every connection task; the accept loop is aborted
        // so the listening socket closes at once.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut rx: watch::Receiver<Control>,
    active: Arc<AtomicUsize>,
    commits: Arc<CommitCuts>,
) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(e) => {
                    tracing::debug!(error = %e, "test proxy accept failed");
                    continue;
                }
            },
            changed = rx.changed() => {
                if changed.is_err() {
                    return; // the proxy was dropped
                }
                continue;
            }
        };
        let control = *rx.borrow();
        match control.mode {
            ProxyMode::Refuse | ProxyMode::Cut => drop(client),
            ProxyMode::Pass | ProxyMode::Blackhole => {
                let guard = ActiveGuard::new(active.clone());
                tokio::spawn(connection(client, upstream, control, rx.clone(), guard, commits.clone()));
            }
        }
    }
}

/// Counts a connection while it lives.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(active: Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::SeqCst);
        Self(active)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    at_accept: Control,
    rx: watch::Receiver<Control>,
    _guard: ActiveGuard,
    commits: Arc<CommitCuts>,
) {
    // A connection accepted while blackholed never reaches the upstream, even if the mode changes later.
    let upstream = if at_accept.mode == ProxyMode::Pass {
        match TcpStream::connect(upstream).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, %upstream, "test proxy could not reach upstream");
                return;
            }
        }
    } else {
        None
    };
    if let Err(e) = pump(client, upstream, at_accept.cuts, rx, commits).await {
        tracing::debug!(error = %e, "test proxy connection ended with an error");
    }
}

/// Moves bytes between the client and the upstream according to the current mode, until either side closes,
/// a `Cut` arrives or the proxy is dropped.
async fn pump(
    mut client: TcpStream,
    mut upstream: Option<TcpStream>,
    cuts_at_start: u64,
    mut rx: watch::Receiver<Control>,
    commits: Arc<CommitCuts>,
) -> io::Result<()> {
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    // The last bytes sent by the client, so that a COMMIT message split across two reads is still recognised.
    let mut client_tail: Vec<u8> = Vec::with_capacity(COMMIT_QUERY.len());
    let mut client_open = true;
    let mut upstream_open = upstream.is_some();
    loop {
        let (cuts, mode) = {
            let c = rx.borrow();
            (c.cuts, c.mode)
        };
        if cuts != cuts_at_start {
            return Ok(()); // dropping both streams closes them
        }
        if !client_open && !upstream_open {
            return Ok(());
        }
        // A connection with an upstream is held while blackholed; one without is read and its bytes swallowed.
        let holding = mode == ProxyMode::Blackhole && upstream.is_some();
        tokio::select! {
            read = client.read(&mut from_client), if client_open && !holding => {
                let n = read?;
                let forward = rx.borrow().mode != ProxyMode::Blackhole;
                match (&mut upstream, n) {
                    (Some(up), 0) => {
                        client_open = false;
                        up.shutdown().await?;
                    }
                    (None, 0) => client_open = false,
                    (Some(up), n) if forward => {
                        up.write_all(&from_client[..n]).await?;
                        let commit = ends_with_commit(&mut client_tail, &from_client[..n]);
                        if commit && commits.claim() {
                            swallow_commit_reply(up).await;
                            commits.done.fetch_add(1, Ordering::SeqCst);
                            tracing::debug!("test proxy cut a connection after forwarding its COMMIT");
                            return Ok(()); // dropping both streams closes them
                        }
                    }
                    _ => {} // blackholed: swallow
                }
            }
            read = read_opt(&mut upstream, &mut from_upstream), if upstream_open && !holding => {
                let n = read?;
                if n == 0 {
                    upstream_open = false;
                    client.shutdown().await?;
                } else if rx.borrow().mode != ProxyMode::Blackhole {
                    client.write_all(&from_upstream[..n]).await?;
                }
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    return Ok(()); // the proxy was dropped
                }
            }
        }
    }
}

/// Appends `chunk` to the client's stream tail and tells whether the stream now contains a COMMIT simple query in
/// its last bytes (the client sends nothing more until it has COMMIT's answer, so the message ends a read).
fn ends_with_commit(tail: &mut Vec<u8>, chunk: &[u8]) -> bool {
    tail.extend_from_slice(chunk);
    let found = tail.windows(COMMIT_QUERY.len()).any(|w| w == COMMIT_QUERY);
    let keep = tail.len().min(COMMIT_QUERY.len() - 1);
    tail.drain(..tail.len() - keep);
    found
}

/// Reads (and discards) the server's answer to a forwarded COMMIT, up to its ReadyForQuery, so that the server has
/// decided the transaction before the proxy closes. Bounded: a server that never answers is closed on anyway.
async fn swallow_commit_reply(upstream: &mut TcpStream) {
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match upstream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(READY_FOR_QUERY.len()).any(|w| w == READY_FOR_QUERY) {
                        return;
                    }
                }
            }
        }
    };
    if tokio::time::timeout(COMMIT_REPLY_WAIT, wait).await.is_err() {
        tracing::debug!("test proxy: no answer to a cut COMMIT within {COMMIT_REPLY_WAIT:?}");
    }
}

async fn read_opt(stream: &mut Option<TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The address a URL's server listens on (first host, TCP).
pub async fn server_addr(url: &str) -> std::net::SocketAddr {
    let cfg: tokio_postgres::Config = url.parse().expect("a valid URL");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("the tests need a TCP database URL, got {other:?}"),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    tokio::net::lookup_host((host.as_str(), port)).await.expect("resolve").next().expect("an address")
}

/// `url` with its server replaced by the proxy (same user, password and database).
pub fn through(url: &str, proxy: &TcpProxy) -> String {
    let cfg: tokio_postgres::Config = url.parse().expect("a valid URL");
    let mut out = format!(
        "host={} port={} user={} dbname={}",
        proxy.addr().ip(),
        proxy.addr().port(),
        cfg.get_user().unwrap_or("postgres"),
        cfg.get_dbname().unwrap_or("postgres")
    );
    if let Some(p) = cfg.get_password() {
        out.push_str(&format!(" password='{}'", String::from_utf8_lossy(p).replace('\'', "\\'")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server on loopback that runs until the test's runtime ends.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Writes `msg` and reads as many bytes back, giving up (with `TimedOut`) after `within`.
    async fn roundtrip_within(s: &mut TcpStream, msg: &[u8], within: Duration) -> io::Result<Vec<u8>> {
        let exchange = async {
            s.write_all(msg).await?;
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf).await?;
            Ok(buf)
        };
        tokio::time::timeout(within, exchange).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    /// A roundtrip that must succeed; bounded so that a broken proxy fails the test instead of hanging it.
    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        roundtrip_within(s, msg, Duration::from_secs(5)).await
    }

    /// True when the peer closed (EOF or reset) within a generous bound.
    async fn closed_by_peer(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    #[test]
    fn a_commit_split_across_reads_is_recognised() {
        let mut tail = Vec::new();
        assert!(!ends_with_commit(&mut tail, b"Q\x00\x00\x00\x0aBEGIN\x00"));
        assert!(!ends_with_commit(&mut tail, &COMMIT_QUERY[..5]));
        assert!(ends_with_commit(&mut tail, &COMMIT_QUERY[5..]));
        assert!(!ends_with_commit(&mut tail, b"Q\x00\x00\x00\x0bCOMMET\x00"), "only COMMIT counts");
        assert!(tail.len() < COMMIT_QUERY.len(), "the tail stays bounded");
    }

    /// A fake PostgreSQL that answers every COMMIT simple query with CommandComplete + ReadyForQuery and counts
    /// the COMMITs it received; anything else is echoed.
    async fn fake_pg(commits: Arc<AtomicUsize>) -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let commits = commits.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let reply: Vec<u8> = if &buf[..n] == COMMIT_QUERY {
                            commits.fetch_add(1, Ordering::SeqCst);
                            [&b"C\x00\x00\x00\x0bCOMMIT\x00"[..], READY_FOR_QUERY, b"I"].concat()
                        } else {
                            buf[..n].to_vec()
                        };
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_armed_commit_reaches_the_server_but_its_answer_never_reaches_the_client() {
        let received = Arc::new(AtomicUsize::new(0));
        let proxy = TcpProxy::start(fake_pg(received.clone()).await).await;
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        // Unarmed: the COMMIT and its answer pass.
        let answer = roundtrip_within(&mut c, COMMIT_QUERY, Duration::from_secs(5)).await.unwrap();
        assert_eq!(&answer[..1], b"C");
        assert_eq!(received.load(Ordering::SeqCst), 1);
        let mut rest = vec![0u8; READY_FOR_QUERY.len() + 1];
        c.read_exact(&mut rest).await.unwrap();

        proxy.cut_next_commits(1);
        assert_eq!(roundtrip(&mut c, b"other").await.unwrap(), b"other", "other traffic passes while armed");
        c.write_all(COMMIT_QUERY).await.unwrap();
        assert!(closed_by_peer(&mut c).await, "the connection is cut after the COMMIT");
        assert_eq!(received.load(Ordering::SeqCst), 2, "the server received the COMMIT");
        assert_eq!(proxy.commits_cut(), 1);

        // One cut only: the next connection's COMMIT is answered.
        let mut d = TcpStream::connect(proxy.addr()).await.unwrap();
        let answer = roundtrip_within(&mut d, COMMIT_QUERY, Duration::from_secs(5)).await.unwrap();
        assert_eq!(&answer[..1], b"C");
        assert_eq!((proxy.commits_cut(), proxy.disarm_commit_cuts()), (1, 0));
    }

    #[tokio::test]
    async fn modes_pass_refuse_cut_blackhole() {
        let proxy = TcpProxy::start(echo_server().await).await;
        assert_eq!(proxy.mode(), ProxyMode::Pass);

        // Pass: bytes go through both ways.
        let mut kept = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut kept, b"hello").await.unwrap(), b"hello");

        // Refuse: new connections are closed at once, existing ones keep working.
        proxy.set_mode(ProxyMode::Refuse);
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(closed_by_peer(&mut refused).await, "a refused connection must be closed");
        assert_eq!(roundtrip(&mut kept, b"still").await.unwrap(), b"still");

        // Cut: the existing connection is dropped now.
        proxy.set_mode(ProxyMode::Cut);
        assert!(closed_by_peer(&mut kept).await, "cut must close existing connections");
        let mut during_cut = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(closed_by_peer(&mut during_cut).await);

        // Blackhole: connections are accepted but nothing comes back, on new and existing ones.
        proxy.set_mode(ProxyMode::Pass);
        let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut existing, b"before").await.unwrap(), b"before");
        proxy.set_mode(ProxyMode::Blackhole);
        let mut silent = TcpStream::connect(proxy.addr()).await.unwrap();
        let quiet = Duration::from_millis(300);
        for s in [&mut silent, &mut existing] {
            let answer = roundtrip_within(s, b"ping", quiet).await;
            assert_eq!(answer.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut), "blackhole must not answer");
        }
        assert_eq!(proxy.active_connections(), 2, "blackholed connections stay open");

        // Back to Pass: new connections work again; the held bytes of the open connection flow, nothing lost; the
        // connection accepted while blackholed stays silent.
        proxy.set_mode(ProxyMode::Pass);
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut fresh, b"again").await.unwrap(), b"again");
        let mut held = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), existing.read_exact(&mut held)).await.unwrap().unwrap();
        assert_eq!(&held, b"ping", "bytes held by the blackhole are delivered once it passes");
        assert_eq!(roundtrip(&mut existing, b"after").await.unwrap(), b"after");
        let answer = roundtrip_within(&mut silent, b"ping", quiet).await;
        assert_eq!(answer.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut), "a silent peer stays silent");

        // Dropping the proxy closes its connections and its port.
        let addr = proxy.addr();
        drop(proxy);
        assert!(closed_by_peer(&mut fresh).await, "dropping the proxy must close its connections");
        assert!(closed_by_peer(&mut silent).await);
        let reconnect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
        assert!(matches!(reconnect, Ok(Err(_))), "the listening port must be closed after drop");
    }
}
