//! The `electrum-gateway` command line. All logic lives in the library.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use electrum_gateway::config::Config;
use electrum_gateway::gateway::Gateway;

#[derive(Parser, Debug)]
#[command(name = "electrum-gateway", version, about = "A verifying, multiplexing Electrum gateway", long_about = None)]
struct Cli {
    /// Log format: `human` or `json`.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default command).
    Serve(ServeArgs),
    /// Make one call to a server and print the result as JSON.
    Call(electrum_gateway::tools::call::CallArgs),
    /// Print the chain tip and address states, then every change, until interrupted.
    Subscribe(electrum_gateway::tools::subscribe::SubscribeArgs),
    /// Discover servers through their peers and write a servers.json.
    Spider(electrum_gateway::tools::spider::SpiderArgs),
    /// Run a simulated regtest network of three servers with the gateway in front, offline.
    Demo(DemoArgs),
    /// Run the simulated Electrum server.
    Sim(electrum_gateway::sim::SimArgs),
    /// Load a server, proxy or gateway and report requests/s, latency and errors.
    Bench(electrum_gateway::bench::BenchArgs),
}

#[derive(Args, Debug, Clone, Default)]
struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Network: bitcoin, testnet, testnet4, signet or regtest.
    #[arg(long, value_name = "NAME")]
    network: Option<String>,
    /// Upstream server URL (repeatable; replaces the configured list).
    #[arg(long, value_name = "URL")]
    upstream: Vec<String>,
    /// Wallet TCP listener [default: 127.0.0.1:50001].
    #[arg(long, value_name = "ADDR")]
    listen_tcp: Option<String>,
    /// Wallet TLS listener [default: 127.0.0.1:50002]; "" disables it.
    #[arg(long, value_name = "ADDR")]
    listen_tls: Option<String>,
    /// Wallet WebSocket listener [default: off].
    #[arg(long, value_name = "ADDR")]
    listen_ws: Option<String>,
    /// HTTP listener for metrics, health, status and admin [default: 127.0.0.1:9190].
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Data directory [default: ~/.electrum-gateway].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct DemoArgs {
    /// Wallet TCP listener of the gateway.
    #[arg(long, default_value = "127.0.0.1:50001", value_name = "ADDR")]
    listen_tcp: String,
    /// Wallet TLS listener of the gateway ("" disables it).
    #[arg(long, default_value = "127.0.0.1:50002", value_name = "ADDR")]
    listen_tls: String,
    /// HTTP listener of the gateway.
    #[arg(long, default_value = "127.0.0.1:9190", value_name = "ADDR")]
    http: String,
    /// Data directory [default: a fresh temporary directory].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Seed of the simulated chain.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(n) = self.network {
            cfg.network = n;
        }
        if !self.upstream.is_empty() {
            cfg.upstreams.servers = self.upstream;
        }
        if let Some(a) = self.listen_tcp {
            cfg.listen.tcp = a;
        }
        if let Some(a) = self.listen_tls {
            cfg.listen.tls = a;
        }
        if let Some(a) = self.listen_ws {
            cfg.listen.ws = a;
        }
        if let Some(a) = self.http {
            cfg.listen.http = a;
        }
        if let Some(d) = self.data_dir {
            cfg.data_dir = d;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Logs go to stderr: `RUST_LOG` sets the level, else `default_level`; colours only on a
/// terminal.
fn init_logging(format: &str, default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Draws the header sync's progress on a terminal while a first sync is far from done
/// (more than a retarget period behind); logs carry it elsewhere.
async fn sync_progress_bar(consensus: std::sync::Arc<electrum_gateway::verify::ChainTracker>) {
    use std::io::{IsTerminal, Write};
    if !std::io::stderr().is_terminal() {
        return;
    }
    let mut tips = consensus.tip_watch();
    let mut targets = consensus.target_watch();
    let mut drawn = false;
    loop {
        let (height, target) = consensus.progress();
        if target.saturating_sub(height) > 2016 || (drawn && height < target) {
            let frac = f64::from(height) / f64::from(target.max(1));
            let filled = (frac * 40.0) as usize;
            eprint!(
                "\rheaders [{}{}] {height}/{target} {:5.1}%",
                "#".repeat(filled),
                " ".repeat(40 - filled.min(40)),
                frac * 100.0
            );
            let _ = std::io::stderr().flush();
            drawn = true;
        } else if drawn {
            eprintln!("\rheaders synced at {height}{}", " ".repeat(50));
            drawn = false;
        }
        tokio::select! {
            r = tips.changed() => if r.is_err() { return },
            r = targets.changed() => if r.is_err() { return },
        }
    }
}

/// SIGTERM (a service manager's stop) and SIGINT (ctrl-c), installed before the gateway
/// starts so that neither kills the process at once.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for the next signal and names it.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

/// Runs until a signal, then drains the gateway within `[listen] drain_secs`; a second
/// signal during the drain stops it at once (exit status 1).
async fn run_until_signal(gw: &Gateway, signals: &mut Signals) -> anyhow::Result<()> {
    let first = signals.recv().await;
    let grace = electrum_gateway::config::secs(gw.config().listen.drain_secs);
    tracing::info!(signal = first, "stopping: draining wallet sessions");
    tokio::select! {
        drained = gw.drain(grace) => {
            tracing::info!(
                sessions_cut = drained.sessions_cut,
                secs = drained.elapsed.as_secs_f64(),
                "drained; state saved"
            );
            Ok(())
        }
        second = signals.recv() => {
            tracing::warn!(signal = second, "second signal: stopping now");
            gw.shutdown();
            anyhow::bail!("stopped by a second {second} before the drain finished")
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.into_config()?;
    let mut signals = Signals::new()?;
    let gw = Gateway::start(cfg).await?;
    if let Some(a) = gw.tcp_addr() {
        eprintln!("electrum-gateway listening on tcp://{a}");
    }
    if let Some(a) = gw.tls_addr() {
        eprintln!("electrum-gateway listening on ssl://{a}");
    }
    if let Some(a) = gw.ws_addr() {
        eprintln!("electrum-gateway listening on ws://{a}");
    }
    if let Some(a) = gw.http_addr() {
        eprintln!("electrum-gateway HTTP on http://{a}/ (status page, /metrics, /health, /admin)");
    }
    tokio::spawn(sync_progress_bar(gw.chain()));
    run_until_signal(&gw, &mut signals).await
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    use electrum_gateway::sim::{EndpointSpec, Sim, SimConfig};
    let endpoints = (0..3)
        .map(|_| "127.0.0.1:0".parse::<EndpointSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    let sim = Sim::start(SimConfig {
        seed: args.seed,
        endpoints,
        ..SimConfig::default()
    })
    .await?;
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("electrum-gateway-demo-{}", std::process::id())),
    };
    let mut cfg = Config {
        network: "regtest".into(),
        data_dir,
        ..Config::default()
    };
    cfg.upstreams.servers = sim.urls().iter().map(|u| u.to_string()).collect();
    cfg.upstreams.use_server_list = false;
    cfg.upstreams.reconnect_initial_secs = 0.5;
    cfg.upstreams.reconnect_max_secs = 5.0;
    cfg.listen.tcp = args.listen_tcp;
    cfg.listen.tls = args.listen_tls;
    cfg.listen.http = args.http;
    let mut signals = Signals::new()?;
    let gw = Gateway::start(cfg).await?;
    println!(
        "Simulated regtest servers (tip at height {}):",
        sim.tip_height()
    );
    for u in sim.urls() {
        println!("  {u}");
    }
    if let Some(a) = gw.tcp_addr() {
        println!("Gateway for wallets:  tcp://{a}");
        println!();
        println!("Point a wallet at it, for example:");
        println!(
            "  electrum --regtest --oneserver --server {}:{}:t",
            a.ip(),
            a.port()
        );
        println!("  electrum-gateway call --server tcp://{a} blockchain.headers.subscribe");
    }
    if let Some(a) = gw.tls_addr() {
        println!("Gateway over TLS:     ssl://{a} (self-signed certificate)");
    }
    if let Some(a) = gw.http_addr() {
        println!("Status page:          http://{a}/  (metrics at /metrics)");
    }
    println!("Mine a block on the simulated network:");
    if let Some(u) = sim.urls().first() {
        println!(
            "  echo '{{\"id\":1,\"method\":\"sim.mine\",\"params\":[1]}}' | nc {} {}",
            u.host, u.port
        );
    }
    println!("Press Ctrl-C to stop.");
    let stopped = run_until_signal(&gw, &mut signals).await;
    sim.shutdown().await;
    stopped
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The one-shot tools print results on stdout; only warnings belong on stderr there.
    let quiet = matches!(
        cli.command,
        Some(Command::Call(_)) | Some(Command::Subscribe(_)) | Some(Command::Spider(_))
    );
    init_logging(&cli.log_format, if quiet { "warn" } else { "info" });
    // Every wallet and upstream connection is a file descriptor (the bench and the simulator
    // hold thousands too): use all the system allows. The gateway warns at start when its
    // configuration does not fit.
    electrum_gateway::gateway::fds::raise_open_files_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        match cli.command {
            None => serve(cli.serve).await,
            Some(Command::Serve(args)) => serve(args).await,
            Some(Command::Call(args)) => {
                std::process::exit(electrum_gateway::tools::call::run(args).await?)
            }
            Some(Command::Subscribe(args)) => {
                std::process::exit(electrum_gateway::tools::subscribe::run(args).await?)
            }
            Some(Command::Spider(args)) => {
                std::process::exit(electrum_gateway::tools::spider::run(args).await?)
            }
            Some(Command::Demo(args)) => demo(args).await,
            Some(Command::Sim(args)) => electrum_gateway::sim::run(args).await,
            Some(Command::Bench(args)) => electrum_gateway::bench::run(args).await,
        }
    });
    // Tasks still running (an upstream connection being torn down) do not hold up the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
