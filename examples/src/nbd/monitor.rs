//! A QMP monitor for the NBD server ([`crate::qmp`]): its IOThreads by name, its export, and `quit`
//! as a graceful shutdown.

use std::io;
use std::path::Path;

use aioctx::MainLoop;

use super::Server;
use crate::qmp::{BlockExport, Monitor};

impl Server {
    /// Starts a QMP monitor on `path` whose in-band commands run on `ml` (serve with
    /// [`serve_on`](Server::serve_on) on the same main loop): `qom-list /objects` and
    /// `query-iothreads` show the server's IOThreads, `qom-set` tunes them while they serve,
    /// `query-block-exports` lists the export (`type` `nbd`, its name as `id` and `node-name`), and
    /// `quit` shuts the server down gracefully (as SIGTERM does), so `serve_on` returns.
    ///
    /// ```no_run
    /// use examples::nbd::{Config, Listen, Server};
    /// let ml = aioctx::MainLoop::builder().handle_signals(false).build()?;
    /// let server = Server::bind(Config {
    ///     listen: Listen::Unix("/tmp/nbd.sock".into()),
    ///     ..Config::default()
    /// })?;
    /// let monitor = server.monitor(&ml, "/tmp/qmp.sock")?;
    /// server.serve_on(&ml)?; // until `quit` on the monitor, SIGINT or SIGTERM
    /// monitor.shutdown();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn monitor(&self, ml: &MainLoop, path: impl AsRef<Path>) -> io::Result<Monitor> {
        let stop = self.shutdown_handle();
        let listed = self.shutdown_handle();
        let name = self.export_name().to_owned();
        let mut builder = Monitor::builder()
            .main_loop(ml)
            .on_quit(move || stop.shutdown())
            .block_exports(move || {
                vec![BlockExport {
                    id: name.clone(),
                    kind: "nbd".into(),
                    node_name: name.clone(),
                    shutting_down: listed.is_shutting_down(),
                }]
            });
        for io in self.iothreads() {
            builder = builder.iothread(io);
        }
        builder.bind(path)
    }
}
