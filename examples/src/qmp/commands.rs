//! The commands and QEMU's dispatch rules (qapi/qmp-dispatch.c): request checks, the command
//! table, argument checks with the QAPI input visitor's messages, and the QOM tree of IOThreads.

use std::sync::atomic::Ordering;

use serde_json::{json, Map, Value};

use super::{poll_param, IoThreadEntry, Session, Shared};

/// A QMP error: its class and description.
#[derive(Debug)]
pub(crate) struct QmpError {
    pub(crate) class: &'static str,
    pub(crate) desc: String,
}

pub(crate) fn generic(desc: impl Into<String>) -> QmpError {
    QmpError {
        class: "GenericError",
        desc: desc.into(),
    }
}

fn not_found(desc: impl Into<String>) -> QmpError {
    QmpError {
        class: "CommandNotFound",
        desc: desc.into(),
    }
}

/// What the dispatcher does after sending a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    Nothing,
    /// `quit` succeeded: the SHUTDOWN event, then the main loop stops.
    Quit,
}

type Handler = fn(&Shared, &Session, &mut Args) -> Result<(Value, After), QmpError>;

struct Command {
    name: &'static str,
    allow_oob: bool,
    run: Handler,
}

/// Every command. `query-iothreads` is marked out-of-band here (QEMU runs it in-band): it reads
/// the IOThreads' parameters and statistics without the main thread, so it answers while the main
/// thread is busy.
const COMMANDS: &[Command] = &[
    Command {
        name: "qmp_capabilities",
        allow_oob: false,
        run: qmp_capabilities,
    },
    Command {
        name: "query-version",
        allow_oob: false,
        run: query_version,
    },
    Command {
        name: "query-commands",
        allow_oob: false,
        run: query_commands,
    },
    Command {
        name: "qom-list",
        allow_oob: false,
        run: qom_list,
    },
    Command {
        name: "qom-get",
        allow_oob: false,
        run: qom_get,
    },
    Command {
        name: "qom-set",
        allow_oob: false,
        run: qom_set,
    },
    Command {
        name: "query-iothreads",
        allow_oob: true,
        run: query_iothreads,
    },
    Command {
        name: "query-block-exports",
        allow_oob: false,
        run: query_block_exports,
    },
    Command {
        name: "quit",
        allow_oob: false,
        run: quit,
    },
];

/// Whether a request goes out of band: `exec-oob` without `execute` (QEMU's `qmp_is_oob`).
pub(crate) fn is_oob(request: &Value) -> bool {
    request
        .as_object()
        .is_some_and(|o| o.contains_key("exec-oob") && !o.contains_key("execute"))
}

/// Runs one request as QEMU's `qmp_dispatch` does; returns the reply and what to do after it.
pub(crate) fn dispatch(shared: &Shared, session: &Session, request: Value) -> (Value, After) {
    let Value::Object(request) = request else {
        return (
            error_reply(generic("QMP input must be a JSON object"), None),
            After::Nothing,
        );
    };
    let id = request.get("id").cloned();
    match run(shared, session, request) {
        Ok((value, after)) => {
            let mut reply = Map::new();
            reply.insert("return".into(), value);
            if let Some(id) = id {
                reply.insert("id".into(), id);
            }
            (Value::Object(reply), after)
        }
        Err(mut e) => {
            // QEMU's monitor_qmp_dispatch: before negotiation, a missing command means "negotiate".
            if !session.negotiated.load(Ordering::Acquire) && e.class == "CommandNotFound" {
                e.desc = "Expecting capabilities negotiation with 'qmp_capabilities'".into();
            }
            (error_reply(e, id), After::Nothing)
        }
    }
}

/// `{"error": {"class", "desc"}, "id"?}`.
pub(crate) fn error_reply(e: QmpError, id: Option<Value>) -> Value {
    let mut reply = Map::new();
    reply.insert("error".into(), json!({"class": e.class, "desc": e.desc}));
    if let Some(id) = id {
        reply.insert("id".into(), id);
    }
    Value::Object(reply)
}

fn run(
    shared: &Shared,
    session: &Session,
    mut request: Map<String, Value>,
) -> Result<(Value, After), QmpError> {
    let allow_oob = session.oob.load(Ordering::Acquire);
    let mut exec_key: Option<&str> = None;
    for (key, value) in &request {
        match key.as_str() {
            "execute" | "exec-oob" if key == "execute" || allow_oob => {
                if !value.is_string() {
                    return Err(generic(format!(
                        "QMP input member '{key}' must be a string"
                    )));
                }
                if let Some(previous) = exec_key {
                    return Err(generic(format!(
                        "QMP input member '{key}' clashes with '{previous}'"
                    )));
                }
                exec_key = Some(key);
            }
            "arguments" => {
                if !value.is_object() {
                    return Err(generic("QMP input member 'arguments' must be an object"));
                }
            }
            "id" => {}
            _ => return Err(generic(format!("QMP input member '{key}' is unexpected"))),
        }
    }
    let Some(exec_key) = exec_key else {
        return Err(generic("QMP input lacks member 'execute'"));
    };
    let oob = exec_key == "exec-oob";
    let name = request
        .get(exec_key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let negotiated = session.negotiated.load(Ordering::Acquire);
    let command = COMMANDS
        .iter()
        .find(|c| c.name == name && (negotiated || c.name == "qmp_capabilities"))
        .ok_or_else(|| not_found(format!("The command {name} has not been found")))?;
    if oob && !command.allow_oob {
        return Err(generic(format!("The command {name} does not support OOB")));
    }
    let arguments = match request.remove("arguments") {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut args = Args(arguments);
    let out = (command.run)(shared, session, &mut args)?;
    args.finish()?;
    Ok(out)
}

/// A command's arguments, checked as QEMU's QAPI input visitor checks them.
pub(crate) struct Args(Map<String, Value>);

impl Args {
    fn take(&mut self, name: &str) -> Result<Value, QmpError> {
        self.0
            .remove(name)
            .ok_or_else(|| generic(format!("Parameter '{name}' is missing")))
    }

    fn string(&mut self, name: &str) -> Result<String, QmpError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            _ => Err(generic(format!(
                "Invalid parameter type for '{name}', expected: string"
            ))),
        }
    }

    /// Arguments nobody asked for (checked after the command ran its visitor, as QEMU does).
    fn finish(&self) -> Result<(), QmpError> {
        match self.0.keys().next() {
            Some(extra) => Err(generic(format!("Parameter '{extra}' is unexpected"))),
            None => Ok(()),
        }
    }

    fn check_empty(&self) -> Result<(), QmpError> {
        self.finish()
    }
}

fn qmp_capabilities(
    _shared: &Shared,
    session: &Session,
    args: &mut Args,
) -> Result<(Value, After), QmpError> {
    let mut oob = false;
    if let Some(enable) = args.0.remove("enable") {
        let Value::Array(caps) = enable else {
            return Err(generic(
                "Invalid parameter type for 'enable', expected: array",
            ));
        };
        for (i, cap) in caps.iter().enumerate() {
            match cap.as_str() {
                Some("oob") => oob = true,
                // QEMU's visitor names list elements 'null' in this message.
                Some(other) => {
                    return Err(generic(format!(
                        "Parameter 'null' does not accept value '{other}'"
                    )))
                }
                None => {
                    return Err(generic(format!(
                        "Invalid parameter type for 'enable[{i}]', expected: string"
                    )))
                }
            }
        }
    }
    args.check_empty()?;
    if session.negotiated.load(Ordering::Acquire) {
        return Err(not_found(
            "Capabilities negotiation is already complete, command ignored",
        ));
    }
    session.oob.store(oob, Ordering::Release);
    session.negotiated.store(true, Ordering::Release);
    Ok((json!({}), After::Nothing))
}

fn query_version(
    shared: &Shared,
    _: &Session,
    args: &mut Args,
) -> Result<(Value, After), QmpError> {
    args.check_empty()?;
    Ok((shared.version.clone(), After::Nothing))
}

fn query_commands(_: &Shared, _: &Session, args: &mut Args) -> Result<(Value, After), QmpError> {
    args.check_empty()?;
    let names: Vec<Value> = COMMANDS.iter().map(|c| json!({"name": c.name})).collect();
    Ok((Value::Array(names), After::Nothing))
}

fn quit(_: &Shared, _: &Session, args: &mut Args) -> Result<(Value, After), QmpError> {
    args.check_empty()?;
    Ok((json!({}), After::Quit))
}

fn query_block_exports(
    shared: &Shared,
    _: &Session,
    args: &mut Args,
) -> Result<(Value, After), QmpError> {
    args.check_empty()?;
    let exports = match &shared.exports {
        Some(list) => list(),
        None => Vec::new(),
    };
    let out = exports
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "type": e.kind,
                "node-name": e.node_name,
                "shutting-down": e.shutting_down,
            })
        })
        .collect();
    Ok((Value::Array(out), After::Nothing))
}

fn query_iothreads(
    shared: &Shared,
    _: &Session,
    args: &mut Args,
) -> Result<(Value, After), QmpError> {
    args.check_empty()?;
    let mut out = Vec::new();
    for entry in &shared.iothreads {
        let params = entry
            .io
            .poll_params()
            .map_err(|e| generic(format!("IOThread '{}': {e}", entry.io.name())))?;
        let stats = entry.io.stats();
        out.push(json!({
            "id": entry.io.name(),
            "thread-id": entry.io.thread_id(),
            "poll-max-ns": params.max_ns,
            "poll-grow": params.grow,
            "poll-shrink": params.shrink,
            "poll-weight": params.weight,
            "x-aioctx-poll-min-hit-percent": params.min_hit_percent,
            "aio-max-batch": entry
                .io
                .max_batch()
                .map_err(|e| generic(format!("IOThread '{}': {e}", entry.io.name())))?,
            "x-aioctx-stats": {
                "iterations": stats.iterations,
                "poll-hits": stats.poll_hits,
                "poll-misses": stats.poll_misses,
                "poll-ns": stats.poll_ns,
                "notify-writes": stats.notify_writes,
                "notify-skipped": stats.notify_skipped,
                "uring-enters": stats.uring_enters,
            },
        }));
    }
    Ok((Value::Array(out), After::Nothing))
}

/// A node of the QOM tree this monitor shows: `/`, `/objects`, and one `iothread` per IOThread.
enum Node<'a> {
    Root,
    Objects,
    IoThread(&'a IoThreadEntry),
}

/// The properties of an `iothread` object, as QEMU lists them (all `int` but `type`), then
/// `poll-weight` (the weight of the block-time averages; not a property of QEMU 10.0's iothread) and
/// aioctx's own polling gate (`PollParams`).
const IOTHREAD_PROPERTIES: &[&str] = &[
    "aio-max-batch",
    "poll-max-ns",
    "poll-grow",
    "poll-shrink",
    "poll-weight",
    "x-aioctx-poll-min-hit-percent",
];

/// Resolves an absolute path, or a partial one naming an object uniquely (QEMU's partial paths).
fn resolve<'a>(shared: &'a Shared, path: &str) -> Result<Node<'a>, QmpError> {
    let iothread = |id: &str| shared.iothreads.iter().find(|e| e.io.name() == id);
    let node = match path {
        "/" => Some(Node::Root),
        "/objects" | "objects" => Some(Node::Objects),
        _ => match path.strip_prefix("/objects/") {
            Some(id) => iothread(id).map(Node::IoThread),
            None if !path.starts_with('/') => iothread(path).map(Node::IoThread),
            None => None,
        },
    };
    node.ok_or_else(|| QmpError {
        class: "DeviceNotFound",
        desc: format!("Device '{path}' not found"),
    })
}

fn qom_list(shared: &Shared, _: &Session, args: &mut Args) -> Result<(Value, After), QmpError> {
    let path = args.string("path")?;
    args.check_empty()?;
    let prop = |name: &str, kind: &str| json!({"name": name, "type": kind});
    let mut out = vec![prop("type", "string")];
    match resolve(shared, &path)? {
        Node::Root => out.push(prop("objects", "child<container>")),
        Node::Objects => {
            for entry in &shared.iothreads {
                out.push(prop(entry.io.name(), "child<iothread>"));
            }
        }
        Node::IoThread(_) => {
            out.extend(IOTHREAD_PROPERTIES.iter().map(|p| prop(p, "int")));
        }
    }
    Ok((Value::Array(out), After::Nothing))
}

fn type_name(node: &Node<'_>) -> &'static str {
    match node {
        Node::Root | Node::Objects => "container",
        Node::IoThread(_) => "iothread",
    }
}

fn no_property(node: &Node<'_>, property: &str) -> QmpError {
    generic(format!(
        "Property '{}.{property}' not found",
        type_name(node)
    ))
}

fn qom_get(shared: &Shared, _: &Session, args: &mut Args) -> Result<(Value, After), QmpError> {
    let path = args.string("path")?;
    let property = args.string("property")?;
    args.check_empty()?;
    let node = resolve(shared, &path)?;
    if property == "type" {
        return Ok((json!(type_name(&node)), After::Nothing));
    }
    let Node::IoThread(entry) = node else {
        return Err(no_property(&node, &property));
    };
    let value = if property == "aio-max-batch" {
        entry
            .io
            .max_batch()
            .map_err(|e| generic(format!("IOThread '{}': {e}", entry.io.name())))? as u64
    } else {
        let mut params = entry
            .io
            .poll_params()
            .map_err(|e| generic(format!("IOThread '{}': {e}", entry.io.name())))?;
        match poll_param(&mut params, &property) {
            Some(value) => *value,
            None => return Err(no_property(&node, &property)),
        }
    };
    Ok((json!(value), After::Nothing))
}

fn qom_set(shared: &Shared, _: &Session, args: &mut Args) -> Result<(Value, After), QmpError> {
    let path = args.string("path")?;
    let property = args.string("property")?;
    let value = args.take("value")?;
    args.check_empty()?;
    let node = resolve(shared, &path)?;
    if property == "type" {
        return Err(generic(format!(
            "Property '{}.type' is not writable",
            type_name(&node)
        )));
    }
    let Node::IoThread(entry) = node else {
        return Err(no_property(&node, &property));
    };
    if !IOTHREAD_PROPERTIES.contains(&property.as_str()) {
        return Err(no_property(&node, &property));
    }
    // QEMU's int properties: an int64 (a float or a larger integer is the wrong type), then the
    // iothread's own range check.
    let Some(n) = value.as_i64() else {
        return Err(generic(format!(
            "Invalid parameter type for '{property}', expected: integer"
        )));
    };
    let Ok(n) = u64::try_from(n) else {
        return Err(generic(format!(
            "{property} value must be in range [0, {}]",
            i64::MAX
        )));
    };
    entry
        .set(&property, n)
        .map_err(|e| generic(format!("IOThread '{}': {e}", entry.io.name())))?;
    Ok((json!({}), After::Nothing))
}
