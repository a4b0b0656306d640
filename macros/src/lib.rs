//! Attribute macros for [aioctx](https://docs.rs/aioctx): `#[aioctx::main]` and `#[aioctx::test]`.
//!
//! Use them through the runtime crate, which re-exports them as `aioctx::main` and `aioctx::test`; the
//! code they generate names `::aioctx`, so the crate that uses them must depend on `aioctx` under that
//! name.
//!
//! Both turn an `async fn` without arguments into a plain `fn` that creates an
//! [`AioContext`](https://docs.rs/aioctx/latest/aioctx/struct.AioContext.html) with
//! `AioContext::builder()` and runs the body with `block_on` on the calling thread:
//!
//! ```ignore
//! #[aioctx::main(backend = "epoll", poll_max_ns = 32768)]
//! async fn main() -> std::io::Result<()> {
//!     aioctx::time::sleep(std::time::Duration::from_millis(1)).await;
//!     Ok(())
//! }
//! ```
//!
//! expands to (roughly)
//!
//! ```ignore
//! fn main() -> std::io::Result<()> {
//!     let body = async {
//!         aioctx::time::sleep(std::time::Duration::from_millis(1)).await;
//!         Ok(())
//!     };
//!     let ctx = ::aioctx::AioContext::builder()
//!         .backend(::aioctx::Backend::Epoll)
//!         .poll_max_ns(32768)
//!         .build()
//!         .expect("aioctx::main: cannot create the AioContext");
//!     ctx.block_on(body)
//! }
//! ```
//!
//! # Options
//!
//! Given as `name = value`, separated by commas:
//!
//! | option | values | default | main | test |
//! | --- | --- | --- | --- | --- |
//! | `backend` | `"auto"`, `"io_uring"`, `"epoll"`, `"poll"`; `"all"` for tests | `"auto"` | yes | yes |
//! | `poll_max_ns` | an integer literal (ns of busy-polling before sleeping) | `0` | yes | yes |
//! | `start_paused` | `true` or `false` (virtual time that auto-advances) | `false` | yes | yes |
//!
//! Misuse (a function that is not `async`, takes arguments or is generic, an unknown option or a bad
//! value) is a compile error that points at the offending tokens.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, Ident, ItemFn, Lit, Meta, Token};

/// Runs an `async fn main` on an aioctx `AioContext` created on the main thread.
///
/// The generated `fn main` keeps the signature (return type included, so `-> Result<(), E>` works),
/// minus `async`. It panics if the context cannot be created (for instance when a forced backend is
/// refused by the kernel).
///
/// Options: `backend = "auto" | "io_uring" | "epoll" | "poll"`, `poll_max_ns = <integer>`,
/// `start_paused = true | false`; see the [crate docs](crate).
///
/// ```ignore
/// use std::time::Duration;
///
/// #[aioctx::main(backend = "epoll")]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let answer = aioctx::spawn_local(async { 42 }).await?;
///     aioctx::time::sleep(Duration::from_millis(1)).await;
///     println!("{answer}");
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::Main, args.into(), item.into()).into()
}

/// Turns an `async fn` into a `#[test]` that runs it on a fresh aioctx `AioContext`.
///
/// Other attributes on the function (`#[should_panic]`, `#[ignore]`, doc comments, ...) are kept on the
/// generated test.
///
/// Options: `backend = "auto" | "io_uring" | "epoll" | "poll" | "all"`, `poll_max_ns = <integer>`,
/// `start_paused = true | false`; see the [crate docs](crate). `backend = "all"` turns `async fn name`
/// into a module `name` holding one test per backend, `name::io_uring`, `name::epoll` and `name::poll`;
/// their bodies can use the items of the enclosing module (`use super::*`).
///
/// ```ignore
/// use std::time::Duration;
///
/// #[aioctx::test]
/// async fn spawn_works() {
///     assert_eq!(aioctx::spawn_local(async { 1 }).await.unwrap(), 1);
/// }
///
/// // An hour of virtual time passes instantly.
/// #[aioctx::test(start_paused = true)]
/// async fn long_timeout() {
///     let start = aioctx::time::Instant::now();
///     aioctx::time::sleep(Duration::from_secs(3600)).await;
///     assert_eq!(start.elapsed(), Duration::from_secs(3600));
/// }
///
/// // Three tests: on_every_backend::io_uring, on_every_backend::epoll, on_every_backend::poll.
/// #[aioctx::test(backend = "all", poll_max_ns = 32768)]
/// async fn on_every_backend() {
///     aioctx::time::sleep(Duration::from_micros(10)).await;
/// }
/// ```
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(Kind::Test, args.into(), item.into()).into()
}

/// Which macro is expanding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Main,
    Test,
}

impl Kind {
    fn attr(self) -> &'static str {
        match self {
            Kind::Main => "#[aioctx::main]",
            Kind::Test => "#[aioctx::test]",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Main => "aioctx::main",
            Kind::Test => "aioctx::test",
        }
    }
}

/// A backend option: one of the runtime's `Backend` variants, or every forced one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BackendChoice {
    Auto,
    IoUring,
    Epoll,
    Poll,
    /// Tests only: one test per forced backend.
    All,
}

impl BackendChoice {
    /// The backends `backend = "all"` expands to, with the name of each generated test.
    const ALL: [(BackendChoice, &'static str); 3] = [
        (BackendChoice::IoUring, "io_uring"),
        (BackendChoice::Epoll, "epoll"),
        (BackendChoice::Poll, "poll"),
    ];

    /// Mirrors `aioctx::Backend::from_name`, plus `all`.
    fn from_name(name: &str) -> Option<BackendChoice> {
        match name.to_ascii_lowercase().as_str() {
            "auto" => Some(BackendChoice::Auto),
            "io_uring" | "io-uring" | "iouring" => Some(BackendChoice::IoUring),
            "epoll" => Some(BackendChoice::Epoll),
            "poll" => Some(BackendChoice::Poll),
            "all" => Some(BackendChoice::All),
            _ => None,
        }
    }

    fn variant(self) -> TokenStream2 {
        match self {
            BackendChoice::Auto => quote!(::aioctx::Backend::Auto),
            BackendChoice::IoUring => quote!(::aioctx::Backend::IoUring),
            BackendChoice::Epoll => quote!(::aioctx::Backend::Epoll),
            BackendChoice::Poll => quote!(::aioctx::Backend::Poll),
            BackendChoice::All => unreachable!("`all` is expanded into one test per backend"),
        }
    }
}

/// The options of one attribute, all optional.
#[derive(Default)]
struct Config {
    backend: Option<BackendChoice>,
    poll_max_ns: Option<u64>,
    start_paused: Option<bool>,
}

const OPTIONS: &str = "expected `backend`, `poll_max_ns` or `start_paused`";

/// Parses the attribute's arguments, reporting every bad option at once.
fn parse_config(kind: Kind, args: TokenStream2) -> syn::Result<Config> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    let mut config = Config::default();
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    for meta in metas {
        let nv = match meta {
            Meta::NameValue(nv) => nv,
            other => {
                let msg = match other.path().get_ident() {
                    Some(name) if is_option(name) => format!("expected `{name} = <value>`"),
                    _ => format!("expected `name = value` options ({OPTIONS})"),
                };
                push(syn::Error::new_spanned(other, msg));
                continue;
            }
        };
        let Some(name) = nv.path.get_ident().map(Ident::to_string) else {
            push(syn::Error::new_spanned(
                &nv.path,
                format!("unknown {} option: {OPTIONS}", kind.attr()),
            ));
            continue;
        };
        let result = match name.as_str() {
            "backend" => parse_backend(kind, &nv.value).map(|b| set(&mut config.backend, b, &nv)),
            "poll_max_ns" => parse_u64(&nv.value).map(|n| set(&mut config.poll_max_ns, n, &nv)),
            "start_paused" => parse_bool(&nv.value).map(|b| set(&mut config.start_paused, b, &nv)),
            _ => Err(syn::Error::new_spanned(
                &nv.path,
                format!("unknown {} option `{name}`: {OPTIONS}", kind.attr()),
            )),
        };
        if let Err(e) = result.and_then(|r| r) {
            push(e);
        }
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(config),
    }
}

fn is_option(name: &Ident) -> bool {
    name == "backend" || name == "poll_max_ns" || name == "start_paused"
}

/// Stores an option's value, refusing to set it twice.
fn set<T>(slot: &mut Option<T>, value: T, nv: &syn::MetaNameValue) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new_spanned(
            nv,
            format!("duplicate option `{}`", nv.path.to_token_stream()),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// The literal of `value`, if it is one (seeing through invisible groups from `macro_rules!`).
fn literal(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(ExprLit { lit, attrs }) if attrs.is_empty() => Some(lit),
        Expr::Group(group) => literal(&group.expr),
        _ => None,
    }
}

fn parse_backend(kind: Kind, value: &Expr) -> syn::Result<BackendChoice> {
    let expected = match kind {
        Kind::Main => r#"expected "auto", "io_uring", "epoll" or "poll""#,
        Kind::Test => r#"expected "auto", "io_uring", "epoll", "poll" or "all""#,
    };
    let Some(Lit::Str(s)) = literal(value) else {
        return Err(syn::Error::new_spanned(
            value,
            format!("`backend` must be a string literal: {expected}"),
        ));
    };
    match BackendChoice::from_name(&s.value()) {
        Some(BackendChoice::All) if kind == Kind::Main => Err(syn::Error::new_spanned(
            s,
            r#"`backend = "all"` is only for #[aioctx::test]: a program has one main; expected "auto", "io_uring", "epoll" or "poll""#,
        )),
        Some(backend) => Ok(backend),
        None => Err(syn::Error::new_spanned(
            s,
            format!("unknown backend {:?}: {expected}", s.value()),
        )),
    }
}

fn parse_u64(value: &Expr) -> syn::Result<u64> {
    const MSG: &str =
        "`poll_max_ns` must be an integer literal (nanoseconds), e.g. `poll_max_ns = 32768`";
    match literal(value) {
        Some(Lit::Int(int)) => int.base10_parse::<u64>().map_err(|e| {
            syn::Error::new_spanned(
                int,
                format!("`poll_max_ns` must be an integer literal between 0 and u64::MAX: {e}"),
            )
        }),
        _ => Err(syn::Error::new_spanned(value, MSG)),
    }
}

fn parse_bool(value: &Expr) -> syn::Result<bool> {
    match literal(value) {
        Some(Lit::Bool(b)) => Ok(b.value),
        _ => Err(syn::Error::new_spanned(
            value,
            "`start_paused` must be `true` or `false`",
        )),
    }
}

/// Checks that the function is one the macro can run: `async`, no arguments, not generic, not `unsafe`
/// or `extern`, and (for tests) not already a `#[test]`.
fn check_signature(kind: Kind, input: &ItemFn) -> syn::Result<()> {
    let sig = &input.sig;
    let mut errors: Vec<syn::Error> = Vec::new();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            format!(
                "{} needs an `async fn`: the `async` keyword is missing from the function declaration",
                kind.attr()
            ),
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            format!("{} functions cannot be generic", kind.attr()),
        ));
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(
            where_clause,
            format!("{} functions cannot have a `where` clause", kind.attr()),
        ));
    }
    if !sig.inputs.is_empty() || sig.variadic.is_some() {
        let msg = match kind {
            Kind::Main => "#[aioctx::main] functions cannot take arguments: `main` takes none",
            Kind::Test => "#[aioctx::test] functions cannot take arguments: a test takes none",
        };
        errors.push(syn::Error::new_spanned(&sig.inputs, msg));
    }
    if let Some(unsafety) = sig.unsafety {
        errors.push(syn::Error::new_spanned(
            unsafety,
            format!("{} functions cannot be `unsafe`", kind.attr()),
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            format!("{} functions cannot be `extern`", kind.attr()),
        ));
    }
    if let Some(constness) = sig.constness {
        errors.push(syn::Error::new_spanned(
            constness,
            format!("{} functions cannot be `const`", kind.attr()),
        ));
    }
    if kind == Kind::Test {
        if let Some(attr) = input.attrs.iter().find(|a| is_test_attr(a)) {
            errors.push(syn::Error::new_spanned(
                attr,
                "second test attribute: #[aioctx::test] already makes the function a #[test]; remove this one",
            ));
        }
    }
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(mut first) => {
            first.extend(errors);
            Err(first)
        }
    }
}

/// `#[test]`, `#[core::prelude::v1::test]`, `#[::std::prelude::rust_2021::test]`...
fn is_test_attr(attr: &Attribute) -> bool {
    let path = attr.path();
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    match segments.as_slice() {
        [only] => only == "test",
        [krate, prelude, _, last] => {
            (krate == "core" || krate == "std") && prelude == "prelude" && last == "test"
        }
        _ => false,
    }
}

fn entry(kind: Kind, args: TokenStream2, item: TokenStream2) -> TokenStream2 {
    let input: ItemFn = match syn::parse2(item.clone()) {
        Ok(input) => input,
        // Not a function: report it and leave the item alone.
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                format!("{} applies to an `async fn`: {e}", kind.attr()),
            );
            return with_error(item, e);
        }
    };
    if let Err(e) = check_signature(kind, &input) {
        return with_error(placeholder(kind, &input), e);
    }
    match parse_config(kind, args) {
        Ok(config) => expand(kind, &input, &config),
        // Expand with the defaults too, so the error is the only one and the body is still checked.
        Err(e) => with_error(expand(kind, &input, &Config::default()), e),
    }
}

fn with_error(tokens: TokenStream2, e: syn::Error) -> TokenStream2 {
    let error = e.to_compile_error();
    quote!(#error #tokens)
}

/// What a function the macro cannot run becomes, besides the error: a plain function of the same name and
/// attributes, so that no second error follows (no `main` function, an unused attribute...).
fn placeholder(kind: Kind, input: &ItemFn) -> TokenStream2 {
    let outer = outer_attrs(&input.attrs);
    let vis = &input.vis;
    let ident = &input.sig.ident;
    let test = match kind {
        Kind::Main => quote!(),
        Kind::Test => quote!(#[::core::prelude::v1::test]),
    };
    quote! {
        #(#outer)*
        #test
        #[allow(dead_code)]
        #vis fn #ident() {}
    }
}

fn outer_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs
        .iter()
        .filter(|a| matches!(a.style, syn::AttrStyle::Outer))
}

fn inner_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs
        .iter()
        .filter(|a| matches!(a.style, syn::AttrStyle::Inner(_)))
}

fn expand(kind: Kind, input: &ItemFn, config: &Config) -> TokenStream2 {
    match config.backend {
        Some(BackendChoice::All) => {
            // One test per backend, in a module named after the function.
            let vis = &input.vis;
            let ident = &input.sig.ident;
            let tests = BackendChoice::ALL.iter().map(|&(backend, name)| {
                let name = Ident::new(name, ident.span());
                function(kind, input, config, backend, name)
            });
            quote! {
                #vis mod #ident {
                    #[allow(unused_imports)]
                    use super::*;
                    #(#tests)*
                }
            }
        }
        backend => {
            let backend = backend.unwrap_or(BackendChoice::Auto);
            function(kind, input, config, backend, input.sig.ident.clone())
        }
    }
}

/// One generated function: `fn main` or a `#[test]`, running the body on a context with `backend`.
fn function(
    kind: Kind,
    input: &ItemFn,
    config: &Config,
    backend: BackendChoice,
    ident: Ident,
) -> TokenStream2 {
    let outer = outer_attrs(&input.attrs);
    let inner = inner_attrs(&input.attrs);
    let vis = &input.vis;
    let mut sig = input.sig.clone();
    sig.asyncness = None;
    sig.ident = ident;
    let body = &input.block;

    // Hygienic locals: the body cannot see or shadow them.
    let body_ident = Ident::new("body", Span::mixed_site());
    let ctx_ident = Ident::new("ctx", Span::mixed_site());

    let mut builder = quote!(::aioctx::AioContext::builder());
    if backend != BackendChoice::Auto {
        let variant = backend.variant();
        builder.extend(quote!(.backend(#variant)));
    }
    if let Some(ns) = config.poll_max_ns {
        builder.extend(quote!(.poll_max_ns(#ns)));
    }
    if let Some(paused) = config.start_paused {
        builder.extend(quote!(.start_paused(#paused)));
    }
    let expect = match (kind, backend) {
        (_, BackendChoice::Auto) => format!("{}: cannot create the AioContext", kind.name()),
        (_, backend) => format!(
            "{}: cannot create the AioContext (backend = {:?})",
            kind.name(),
            BackendChoice::ALL
                .iter()
                .find(|(b, _)| *b == backend)
                .map_or("", |(_, name)| name)
        ),
    };
    let test = match kind {
        Kind::Main => quote!(),
        Kind::Test => quote!(#[::core::prelude::v1::test]),
    };
    // The tail carries the span of the body's end, so that type errors about the returned value point
    // at the function rather than at the attribute.
    let end = body.brace_token.span.close();
    let run = quote_spanned!(end=> #ctx_ident.block_on(#body_ident));
    quote! {
        #(#outer)*
        #test
        #vis #sig {
            #(#inner)*
            let #body_ident = async #body;
            let #ctx_ident = #builder
                .build()
                .expect(#expect);
            #run
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{entry, Kind};

    fn expand_str(kind: Kind, args: &str, item: &str) -> String {
        entry(kind, args.parse().unwrap(), item.parse().unwrap()).to_string()
    }

    #[test]
    fn main_keeps_signature_and_options() {
        let out = expand_str(
            Kind::Main,
            r#"backend = "epoll", poll_max_ns = 32_768, start_paused = true"#,
            "async fn main() -> Result<(), ()> { Ok(()) }",
        );
        assert!(out.contains("fn main () -> Result < () , () >"), "{out}");
        assert!(!out.contains("async fn"), "{out}");
        assert!(out.contains(":: aioctx :: Backend :: Epoll"), "{out}");
        assert!(out.contains("poll_max_ns (32768u64)"), "{out}");
        assert!(out.contains("start_paused (true)"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn test_all_makes_a_module_of_three_tests() {
        let out = expand_str(
            Kind::Test,
            r#"backend = "all""#,
            "#[should_panic] async fn t() {}",
        );
        assert!(out.contains("mod t"), "{out}");
        for name in ["io_uring", "epoll", "poll"] {
            assert!(out.contains(&format!("fn {name} ()")), "{out}");
        }
        assert_eq!(out.matches("# [should_panic]").count(), 3, "{out}");
        assert_eq!(out.matches("test]").count(), 3, "{out}");
    }

    /// Expands `item` under `args` and checks the output is an error containing `needle`.
    fn fails(kind: Kind, args: &str, item: &str, needle: &str) {
        let out = expand_str(kind, args, item);
        assert!(out.contains("compile_error"), "{args} {item}: {out}");
        assert!(
            out.contains(needle),
            "{args} {item}: no {needle:?} in {out}"
        );
    }

    #[test]
    fn errors() {
        let t = Kind::Test;
        let f = "async fn t() {}";
        fails(t, "", "fn t() {}", "`async` keyword is missing");
        fails(t, "", "async fn t(x: u8) {}", "cannot take arguments");
        fails(t, "", "async fn t<T>() {}", "cannot be generic");
        fails(t, "", "async fn t() where u8: Copy {}", "`where` clause");
        fails(t, "", "async unsafe fn t() {}", "cannot be `unsafe`");
        fails(t, "", "#[test] async fn t() {}", "second test attribute");
        fails(
            t,
            "flavor = 1",
            f,
            "unknown #[aioctx::test] option `flavor`",
        );
        fails(
            t,
            r#"backend = "kqueue""#,
            f,
            r#"unknown backend \"kqueue\""#,
        );
        fails(t, "backend = epoll", f, "must be a string literal");
        fails(t, r#"poll_max_ns = "x""#, f, "must be an integer literal");
        fails(t, "poll_max_ns = -1", f, "must be an integer literal");
        fails(t, "poll_max_ns = 99999999999999999999", f, "u64::MAX");
        fails(t, "start_paused = 1", f, "`true` or `false`");
        fails(t, "start_paused", f, "expected `start_paused = <value>`");
        fails(
            t,
            r#"backend = "poll", backend = "epoll""#,
            f,
            "duplicate option",
        );
        let m = Kind::Main;
        fails(
            m,
            r#"backend = "all""#,
            "async fn main() {}",
            "only for #[aioctx::test]",
        );
        fails(m, "", "fn main() {}", "`async` keyword is missing");
        fails(m, "", "struct S;", "applies to an `async fn`");
    }
}
