//! jq programs that map and filter gear payloads into CloudEvents and route events by content.
//!
//! Users already know jq, so Gearbox does not invent a transform language: a [`Program`] is a jq
//! program compiled by [jaq](https://github.com/01mf02/jaq) (jaq-core, jaq-std and jaq-json), run on
//! one event at a time. A program may produce zero outputs (the event is filtered out), one
//! output (the event is mapped) or several (the event is split). A [`Chain`] feeds every output
//! of one program into the next, and [`matches()`] turns a program into a routing condition.
//!
//! Invariants:
//!
//! - A program cannot see the process environment. Gearbox keeps secrets in environment
//!   variables, so `env` and `$ENV` are not defined: a program that names them fails to compile
//!   with a message saying why. `input`, `inputs`, `input_filename`, `$__loc__`, `$__prog_args`,
//!   `import` and `include` are rejected the same way, so a program reads nothing but its input
//!   event: no files, no stdin, no modules.
//! - A program writes nowhere. `debug`, `debug(msg)` and `stderr` pass their input through but log
//!   nothing, because a payload may hold personal data that must not end up in process logs.
//!   `halt` and `halt_error` cannot stop the process: they fail the run with a [`RunError::Jq`]
//!   that carries the exit code and the input.
//! - A run never returns more than [`OUTPUTS_MAX`] values, and every value it returns is plain
//!   JSON nested at most [`VALUE_DEPTH_MAX`] levels deep (anything else is a typed error).
//! - Compiling never overflows the stack: programs longer than [`PROGRAM_BYTES_MAX`] or nested
//!   deeper than [`PROGRAM_DEPTH_MAX`] are rejected before jaq parses them.
//!
//! Numbers: integers that fit in `i64` or `u64` (ids, `2^53 + 1`, `u64::MAX`) pass through a
//! program unchanged, because jaq keeps integers as machine or big integers rather than `f64`.
//! Integer arithmetic stays exact (`.id + 1` on `2^53 + 1` gives `2^53 + 2`). An integer that
//! outgrows `u64` on the way out (for example `u64::MAX + 1`) becomes the nearest `f64`, as in jq.
//! Other numbers are `f64`s, as in jq. NaN and infinities are not JSON and make the run fail with
//! [`RunError::NotRepresentable`]. Output objects have their keys sorted, because `serde_json`'s
//! `Map` is built here without its `preserve_order` feature.
//!
//! Known limits (the program author must be trusted with these; only running transforms in a
//! separate process would contain them):
//!
//! - CPU: a program can loop forever without producing an output, for example
//!   `last(range(infinite))` or `until(false; .)`. [`OUTPUTS_MAX`] bounds outputs, not time.
//! - Memory: one output can be huge, for example `[range(1e9)]`.
//! - Stack: jaq evaluates recursively, so unbounded recursion in the program
//!   (`def f: [f]; f`) or a value built tens of thousands of levels deep at run time
//!   (`reduce range(100000) as $i (null; [.])`) overflows the thread's stack, which aborts the
//!   process. [`PROGRAM_DEPTH_MAX`] only protects parsing and compiling, and the evaluation of
//!   the program's own syntax. Inputs are assumed to be no deeper than `serde_json` parses
//!   (128 levels).
//! - `now`, `localtime`, `mktime` and `strflocaltime` read the clock and the system time zone.

use std::fmt;
use std::sync::Arc;

use jaq_core::box_iter::box_once;
use jaq_core::compile::Undefined;
use jaq_core::data::JustLut;
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::native::Fun;
use jaq_core::{Compiler, Ctx, Cv, Exn, Native, ValXs, Vars};
use jaq_json::{Map, Num, Rc, Val};
use serde_json::{Number, Value};

/// Most outputs one program run (or one chain run) may produce; more is
/// [`RunError::TooManyOutputs`].
pub const OUTPUTS_MAX: usize = 1000;

/// Longest program source accepted, in bytes.
pub const PROGRAM_BYTES_MAX: usize = 64 * 1024;

/// Deepest program accepted, counted in brackets, string interpolations, operators and keywords
/// along the deepest path of the source.
///
/// jaq parses, compiles and evaluates recursively, using up to about 10 KiB of stack per level of
/// syntax tree in an unoptimised build. The count over-estimates the tree's depth, so a program
/// within this limit compiles and runs within a 2 MiB stack (a tokio worker's) in any build
/// profile; one twice as deep could overflow it and abort the process.
pub const PROGRAM_DEPTH_MAX: usize = 100;

/// Deepest nesting of arrays and objects accepted in an output value.
///
/// This matches the nesting that `serde_json` accepts when it reads JSON text back, so every
/// output can be stored and parsed again.
pub const VALUE_DEPTH_MAX: usize = 128;

/// Longest jq error message kept in a [`RunError::Jq`], in bytes; the rest is cut off.
///
/// jq type errors quote the offending value, which may be a whole event.
pub const MESSAGE_BYTES_MAX: usize = 2048;

/// Most problems quoted in a [`CompileError::Invalid`] message (all are kept in its field).
const PROBLEMS_SHOWN_MAX: usize = 5;

/// Longest source snippet quoted in a [`Problem`], in characters.
const SNIPPET_CHARS_MAX: usize = 24;

/// The data that jaq filters run on: JSON values, with the look-up table as the only global data.
type Data = JustLut<Val>;

/// A position in a program's source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Byte offset from the start of the source.
    pub offset: usize,
    /// Line number, from 1.
    pub line: usize,
    /// Column number in characters, from 1.
    pub column: usize,
}

impl Position {
    /// Returns the position of byte `offset` in `source`, or of the character holding it.
    fn at(source: &str, offset: usize) -> Position {
        let offset = source.floor_char_boundary(offset);
        let before = &source[..offset];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Position {
            offset,
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One thing wrong with a program's source, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, such as "undefined function `foo/0`" or "expected term".
    pub message: String,
    /// Where it is; `None` only if jaq reported a place outside the program's own text.
    pub at: Option<Position>,
    /// The source text at that place (a few characters), or `None` at the end of the program.
    pub near: Option<String>,
    /// Why Gearbox leaves out a name that jq users may expect, such as `env` or `input`.
    pub hint: Option<&'static str>,
}

impl Problem {
    /// Builds a problem located at `part`, a slice of `source` that jaq handed back.
    fn new(source: &str, message: String, part: &str) -> Problem {
        let Some(offset) = offset_in(source, part) else {
            return Problem {
                message,
                at: None,
                near: None,
                hint: None,
            };
        };
        Problem {
            message,
            at: Some(Position::at(source, offset)),
            near: snippet(part),
            hint: None,
        }
    }

    fn with_hint(self, hint: Option<&'static str>) -> Problem {
        Problem { hint, ..self }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(at) = self.at {
            write!(f, " at {at}")?;
            match &self.near {
                Some(near) => write!(f, " near `{near}`")?,
                None => f.write_str(" (end of program)")?,
            }
        }
        if let Some(hint) = self.hint {
            write!(f, ": {hint}")?;
        }
        Ok(())
    }
}

/// Why a program did not compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The source is longer than [`PROGRAM_BYTES_MAX`].
    #[error("jq program is {len} bytes long; at most {max} bytes are accepted")]
    TooLong {
        /// Length of the source, in bytes.
        len: usize,
        /// The limit, [`PROGRAM_BYTES_MAX`].
        max: usize,
    },
    /// The source nests deeper than [`PROGRAM_DEPTH_MAX`].
    #[error(
        "jq program nests too deeply at {at}: more than {max} levels of brackets and operators; \
         split it into smaller functions or chain steps"
    )]
    TooDeep {
        /// Where the limit was first exceeded.
        at: Position,
        /// The limit, [`PROGRAM_DEPTH_MAX`].
        max: usize,
    },
    /// The source is not a valid jq program, or uses something Gearbox does not provide.
    #[error("invalid jq program: {}", list_problems(problems))]
    Invalid {
        /// Every problem jaq found, in source order within each phase (lexing, parsing, names).
        problems: Vec<Problem>,
    },
}

fn list_problems(problems: &[Problem]) -> String {
    let shown: Vec<String> = problems
        .iter()
        .take(PROBLEMS_SHOWN_MAX)
        .map(Problem::to_string)
        .collect();
    let mut text = shown.join("; ");
    if problems.len() > PROBLEMS_SHOWN_MAX {
        let more = problems.len() - PROBLEMS_SHOWN_MAX;
        text.push_str(&format!("; and {more} more"));
    }
    text
}

/// Why a run of a program (or chain) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// jq raised an error: a runtime error such as adding a string to a number, or `error(...)`
    /// called by the program.
    #[error("jq error: {message}")]
    Jq {
        /// The error as jq reports it; the text itself when the program raised a string, else
        /// the raised value as JSON. Cut to [`MESSAGE_BYTES_MAX`] bytes.
        message: String,
    },
    /// The run produced more than [`OUTPUTS_MAX`] outputs.
    #[error("jq program produced more than {max} outputs")]
    TooManyOutputs {
        /// The limit, [`OUTPUTS_MAX`].
        max: usize,
    },
    /// An output holds something that is not plain JSON.
    #[error("jq output at `{path}` is not representable as JSON: {reason}")]
    NotRepresentable {
        /// Where in the output, as a jq path such as `.data.values[2]` (`.` for the whole output).
        path: String,
        /// What the value is, such as "NaN" or "a byte string".
        reason: String,
    },
}

/// A compiled jq program; cheap to clone and safe to share between threads.
#[derive(Clone)]
pub struct Program(Arc<Compiled>);

struct Compiled {
    source: Box<str>,
    filter: jaq_core::Filter<Data>,
}

// Transforms are shared across tokio tasks. jaq values are `Rc`-based and stay inside one call
// to `run`; the compiled filter holds only terms and function pointers.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Program>();
};

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Program").field(&self.source()).finish()
    }
}

impl Program {
    /// Compiles a jq program.
    ///
    /// # Errors
    ///
    /// [`CompileError::TooLong`] if `source` exceeds [`PROGRAM_BYTES_MAX`] bytes,
    /// [`CompileError::TooDeep`] if it nests deeper than [`PROGRAM_DEPTH_MAX`], and
    /// [`CompileError::Invalid`] for syntax errors, undefined names (including the disabled
    /// `env`, `$ENV`, `input` and `inputs`) and module imports; each [`Problem`] names what is
    /// wrong and where.
    pub fn compile(source: &str) -> Result<Program, CompileError> {
        if source.len() > PROGRAM_BYTES_MAX {
            return Err(CompileError::TooLong {
                len: source.len(),
                max: PROGRAM_BYTES_MAX,
            });
        }
        check_depth(source)?;
        let filter =
            compile_filter(source).map_err(|problems| CompileError::Invalid { problems })?;
        Ok(Program(Arc::new(Compiled {
            source: source.into(),
            filter,
        })))
    }

    /// Runs the program on one input; returns every output, in order. Zero outputs means the
    /// input was filtered out.
    ///
    /// # Errors
    ///
    /// [`RunError::Jq`] if the program raises an error, [`RunError::TooManyOutputs`] if it
    /// produces more than [`OUTPUTS_MAX`] outputs, and [`RunError::NotRepresentable`] if an
    /// output is not plain JSON. Outputs produced before the error are discarded.
    pub fn run(&self, input: Value) -> Result<Vec<Value>, RunError> {
        let mut outputs = Vec::new();
        self.run_into(&input, &mut outputs)?;
        Ok(outputs)
    }

    /// The program's source text, as given to [`Program::compile`].
    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// Runs the program on `input` and appends its outputs to `outputs`, failing once `outputs`
    /// would hold more than [`OUTPUTS_MAX`] values.
    fn run_into(&self, input: &Value, outputs: &mut Vec<Value>) -> Result<(), RunError> {
        let filter = &self.0.filter;
        let ctx = Ctx::<Data>::new(&filter.lut, Vars::new([]));
        for output in filter.id.run((ctx, to_val(input))) {
            if outputs.len() == OUTPUTS_MAX {
                return Err(RunError::TooManyOutputs { max: OUTPUTS_MAX });
            }
            let output = output.map_err(run_error)?;
            outputs.push(to_json(&output, 0).map_err(Unrepresentable::into_run_error)?);
        }
        Ok(())
    }

    /// Runs the program on `input` until its first output, and returns whether that output is
    /// truthy; later outputs are never computed.
    fn first_is_truthy(&self, input: &Value) -> Result<bool, RunError> {
        let filter = &self.0.filter;
        let ctx = Ctx::<Data>::new(&filter.lut, Vars::new([]));
        match filter.id.run((ctx, to_val(input))).next() {
            None => Ok(false),
            Some(Ok(output)) => Ok(!matches!(output, Val::Null | Val::Bool(false))),
            Some(Err(exn)) => Err(run_error(exn)),
        }
    }
}

/// Several programs applied in sequence: every output of step i is an input of step i+1.
///
/// An empty chain passes its input through unchanged.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    programs: Vec<Program>,
}

impl Chain {
    /// Builds a chain that runs `programs` in order.
    pub fn new(programs: Vec<Program>) -> Chain {
        Chain { programs }
    }

    /// Runs every step on every output of the step before; returns the last step's outputs in
    /// order. Zero outputs means the input was filtered out.
    ///
    /// # Errors
    ///
    /// The first error of any step on any of its inputs (see [`Program::run`]).
    /// [`RunError::TooManyOutputs`] if any step produces more than [`OUTPUTS_MAX`] outputs in
    /// total over all of its inputs, which bounds the work of the next step too.
    pub fn run(&self, input: Value) -> Result<Vec<Value>, RunError> {
        let mut values = vec![input];
        for program in &self.programs {
            let mut outputs = Vec::new();
            for value in &values {
                program.run_into(value, &mut outputs)?;
            }
            values = outputs;
        }
        Ok(values)
    }

    /// Whether the chain has no steps (and so passes its input through).
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// The steps, in order.
    pub fn programs(&self) -> &[Program] {
        &self.programs
    }
}

/// jq truthiness: everything but `false` and `null` is true (for routing conditions).
pub fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

/// A routing condition: a program whose FIRST output decides (no output = false).
///
/// Later outputs are not computed, so `true, error("x")` matches.
///
/// # Errors
///
/// [`RunError::Jq`] if the program raises an error before its first output.
pub fn matches(program: &Program, input: &Value) -> Result<bool, RunError> {
    program.first_is_truthy(input)
}

/// Lexes, parses and compiles `source` against the restricted standard library.
fn compile_filter(source: &str) -> Result<jaq_core::Filter<Data>, Vec<Problem>> {
    let arena = Arena::default();
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    // `Loader::new` keeps jaq's default module reader, which refuses every `import` and `include`.
    let modules = Loader::new(defs)
        .load(
            &arena,
            File {
                code: source,
                path: (),
            },
        )
        .map_err(|errors| load_problems(source, errors))?;
    // Data imports (`import "x" as $x;`) would read files; refuse them all.
    load::import(&modules, |_| Err(String::new()))
        .map_err(|errors| load_problems(source, errors))?;
    Compiler::<_, Data>::default()
        .with_funs(natives())
        .compile(modules)
        .map_err(|errors| {
            let undefined = errors.into_iter().flat_map(|(_file, errors)| errors);
            undefined
                .map(|(name, kind)| {
                    Problem::new(source, undefined_message(name, &kind), name)
                        .with_hint(disabled_reason(name))
                })
                .collect()
        })
}

/// jaq's native filters, minus those that reach outside the input event.
fn natives() -> impl Iterator<Item = Fun<Data>> {
    let all = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    // `input` and `inputs` are not in these lists (jaq-std keeps them apart), so they stay
    // undefined.
    all.filter(|(name, _, _)| *name != "env")
        .map(|(name, args, native)| match name {
            // `debug`, `debug(msg)` and `stderr` are defined on top of these two; without them
            // they just pass their input through.
            "debug_empty" | "stderr_empty" => (name, args, Native::<Data>::new(log_nothing)),
            "halt" => (name, args, Native::<Data>::new(halt_fails)),
            _ => (name, args, native),
        })
}

fn log_nothing<'a>(_cv: Cv<'a, Data>) -> ValXs<'a, Val> {
    Box::new(std::iter::empty())
}

/// Replaces `halt($code)`, which would end the process, by an error carrying the exit code and
/// the input (the message, for `halt_error`).
fn halt_fails<'a>(mut cv: Cv<'a, Data>) -> ValXs<'a, Val> {
    let code = cv.0.pop_var();
    let message = format!("halted with exit code {code}: {}", text(&cv.1));
    box_once(Err(Exn::from(jaq_core::Error::str(message))))
}

/// Turns jaq's lexing, parsing and import errors into problems.
fn load_problems(source: &str, errors: load::Errors<&str, ()>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (_file, error) in errors {
        match error {
            load::Error::Io(imports) => {
                problems.extend(imports.into_iter().map(|(path, _why)| {
                    let message = format!("cannot import `{path}`");
                    Problem::new(source, message, path).with_hint(Some(
                        "Gearbox transforms cannot use `import` or `include`; put the \
                         definitions in the program",
                    ))
                }));
            }
            load::Error::Lex(errors) => {
                problems.extend(
                    errors
                        .into_iter()
                        .map(|(expect, rest)| Problem::new(source, lex_message(&expect), rest)),
                );
            }
            load::Error::Parse(errors) => {
                problems.extend(
                    errors
                        .into_iter()
                        .map(|(expect, found)| Problem::new(source, parse_message(&expect), found)),
                );
            }
        }
    }
    problems
}

fn lex_message(expect: &load::lex::Expect<&str>) -> String {
    use load::lex::Expect;
    match expect {
        Expect::Token => "unexpected character".to_owned(),
        Expect::Delim(open) => {
            let close = match *open {
                "(" => ")",
                "[" => "]",
                "{" => "}",
                "\"" => "\"",
                _ => "closing delimiter",
            };
            format!("missing `{close}` to close `{open}`")
        }
        expect => format!("expected {}", expect.as_str()),
    }
}

fn parse_message(expect: &load::parse::Expect<&str>) -> String {
    use load::parse::Expect;
    match expect {
        Expect::Nothing => "unexpected token".to_owned(),
        Expect::Just(token) => format!("expected `{token}`"),
        expect => format!("expected {}", expect.as_str()),
    }
}

fn undefined_message(name: &str, kind: &Undefined) -> String {
    match kind {
        Undefined::Filter(arity) => format!("undefined function `{name}/{arity}`"),
        Undefined::Var => format!("undefined variable `{name}`"),
        Undefined::Label => format!("undefined label `{name}`"),
        Undefined::Mod => format!("undefined module `{name}`"),
        _ => format!("undefined name `{name}`"),
    }
}

/// Why Gearbox leaves out a name that jq users may expect.
fn disabled_reason(name: &str) -> Option<&'static str> {
    match name {
        "env" | "$ENV" => Some(
            "Gearbox transforms cannot read the process environment, which holds secrets; \
             put constants in the program",
        ),
        "input" | "inputs" => {
            Some("a Gearbox transform sees exactly one event, as `.`; there is no input stream")
        }
        "input_filename" | "input_line_number" | "$__loc__" | "$__prog_args" | "$__prog_name" => {
            Some("Gearbox transforms have no input files or program arguments")
        }
        _ => None,
    }
}

/// Byte offset of `part` within `whole`, if `part` is a slice of it.
///
/// jaq reports error locations as slices of the text it was given; slices of other text (such
/// as the standard library) have no position in the program.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let inside = start + part.len() <= whole.len() && whole.is_char_boundary(start);
    inside.then_some(start)
}

/// The first few characters of `part` on its line, or `None` if it is empty.
fn snippet(part: &str) -> Option<String> {
    let line = part.lines().next().unwrap_or("").trim_end();
    if line.is_empty() {
        return None;
    }
    let mut chars = line.chars();
    let mut near: String = chars.by_ref().take(SNIPPET_CHARS_MAX).collect();
    if chars.next().is_some() {
        near.push('…');
    }
    Some(near)
}

/// One open bracket (or the top level) while [`check_depth`] scans a program.
struct Level {
    /// Depth count at which this level starts.
    base: usize,
    /// Operators and keywords seen so far at this level since the last `;`.
    ops: usize,
    /// For each `def` open at this level, the operator count that its terminating `;` restores.
    defs: Vec<usize>,
    /// The count restored by the last `;` that ended a `def`, for spotting sibling definitions.
    def_ended_at: Option<usize>,
    /// What opened the level: `(`, `[`, `{`, `\` (string interpolation) or ` ` (top level).
    open: u8,
}

impl Level {
    fn new(base: usize, open: u8) -> Level {
        Level {
            base,
            ops: 0,
            defs: Vec::new(),
            def_ended_at: None,
            open,
        }
    }

    /// Notes a `def` keyword.
    fn open_def(&mut self) {
        // Definitions that follow one another are siblings in jaq's syntax tree.
        if self.def_ended_at != Some(self.ops) {
            self.ops += 1;
        }
        self.defs.push(self.ops);
    }

    /// Notes a `;`, which ends a definition, an argument or a module directive.
    fn semicolon(&mut self) {
        match self.defs.pop() {
            Some(ops) => {
                self.ops = ops;
                self.def_ended_at = Some(ops);
            }
            None => self.ops = 0,
        }
    }

    fn depth(&self) -> usize {
        self.base + self.ops
    }
}

/// Rejects programs whose syntax tree could be deeper than [`PROGRAM_DEPTH_MAX`].
///
/// This runs before jaq sees the source, so it must not recurse: it scans bytes with an explicit
/// stack. It over-estimates the tree's depth by counting, along the current path of brackets,
/// one per bracket and one per operator character or keyword, because chains such as `a | b | c`
/// or `1 + 2 + 3` nest as deeply as brackets do. Commas and colons directly inside `{...}` are
/// not counted, because object entries are siblings; a `;` ends a definition or an argument, so
/// it restores the count from before it.
fn check_depth(source: &str) -> Result<(), CompileError> {
    const KEYWORDS: [&str; 12] = [
        "and", "or", "as", "if", "then", "elif", "else", "reduce", "foreach", "try", "catch",
        "label",
    ];
    let bytes = source.as_bytes();
    let mut levels = vec![Level::new(0, b' ')];
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let byte = bytes[i];
        i += 1;
        let nested = levels.len() > 1;
        let level = levels.last_mut().expect("the top level is never popped");
        if in_string {
            match byte {
                b'\\' if bytes.get(i) == Some(&b'(') => {
                    i += 1;
                    let base = level.depth() + 1;
                    levels.push(Level::new(base, b'\\'));
                    in_string = false;
                }
                // An escaped character, such as `\"`, cannot end the string.
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'#' => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b'(' | b'[' | b'{' => {
                    let base = level.depth() + 1;
                    levels.push(Level::new(base, byte));
                }
                // Unbalanced closers are left for jaq's lexer to report.
                b')' | b']' | b'}' if nested => {
                    let closed = levels.pop().expect("more than one level");
                    in_string = closed.open == b'\\';
                }
                b';' => level.semicolon(),
                b',' | b':' if level.open == b'{' => {}
                b'|' | b',' | b'+' | b'-' | b'*' | b'/' | b'%' | b'=' | b'<' | b'>' | b'!'
                | b'?' | b':' => level.ops += 1,
                b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_')
                    {
                        i += 1;
                    }
                    let word = &source[start..i];
                    if word == "def" {
                        level.open_def();
                    } else if KEYWORDS.contains(&word) {
                        level.ops += 1;
                    }
                }
                _ => {}
            }
        }
        let depth = levels.last().map_or(0, Level::depth);
        if depth > PROGRAM_DEPTH_MAX {
            return Err(CompileError::TooDeep {
                at: Position::at(source, start),
                max: PROGRAM_DEPTH_MAX,
            });
        }
    }
    Ok(())
}

/// Converts an input event into a jaq value; integers stay integers.
fn to_val(value: &Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => Val::Num(to_num(n)),
        Value::String(s) => Val::utf8_str(s.clone()),
        Value::Array(items) => Val::Arr(Rc::new(items.iter().map(to_val).collect())),
        Value::Object(entries) => Val::obj(
            entries
                .iter()
                .map(|(k, v)| (Val::utf8_str(k.clone()), to_val(v)))
                .collect::<Map>(),
        ),
    }
}

fn to_num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::from_integral(i)
    } else if let Some(u) = n.as_u64() {
        Num::from_integral(u)
    } else {
        // Without serde_json's `arbitrary_precision`, every other number is an `f64`.
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// A value that has no JSON form, and where it sits in the output (innermost step first).
struct Unrepresentable {
    reversed_path: Vec<String>,
    reason: String,
}

impl Unrepresentable {
    fn new(reason: impl Into<String>) -> Unrepresentable {
        Unrepresentable {
            reversed_path: Vec::new(),
            reason: reason.into(),
        }
    }

    fn within(mut self, step: String) -> Unrepresentable {
        self.reversed_path.push(step);
        self
    }

    fn into_run_error(self) -> RunError {
        let mut path: String = self.reversed_path.into_iter().rev().collect();
        if !path.starts_with('.') {
            path.insert(0, '.');
        }
        RunError::NotRepresentable {
            path,
            reason: self.reason,
        }
    }
}

/// Converts a jaq output into JSON. Recursion is bounded by [`VALUE_DEPTH_MAX`].
fn to_json(value: &Val, depth: usize) -> Result<Value, Unrepresentable> {
    match value {
        Val::Null => Ok(Value::Null),
        Val::Bool(b) => Ok(Value::Bool(*b)),
        Val::Num(n) => num_to_json(n).map(Value::Number),
        Val::TStr(bytes) => Ok(Value::String(String::from_utf8_lossy(bytes).into_owned())),
        Val::BStr(_) => Err(Unrepresentable::new(
            "a byte string (made by `tobytes`); convert it with `@base64` first",
        )),
        Val::Arr(_) | Val::Obj(_) if depth >= VALUE_DEPTH_MAX => Err(Unrepresentable::new(
            format!("nested deeper than {VALUE_DEPTH_MAX} levels"),
        )),
        Val::Arr(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| to_json(item, depth + 1).map_err(|e| e.within(format!("[{i}]"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Val::Obj(entries) => entries
            .iter()
            .map(|(key, item)| {
                let Val::TStr(key) = key else {
                    return Err(Unrepresentable::new(format!(
                        "object key {key} is not a string"
                    )));
                };
                let key = String::from_utf8_lossy(key).into_owned();
                let item = to_json(item, depth + 1).map_err(|e| e.within(key_step(&key)))?;
                Ok((key, item))
            })
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .map(Value::Object),
    }
}

/// One step of a jq path to the object entry `key`: `.key` or `["key"]`.
fn key_step(key: &str) -> String {
    let mut chars = key.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!(".{key}")
    } else {
        format!("[{}]", Value::from(key))
    }
}

fn num_to_json(n: &Num) -> Result<Number, Unrepresentable> {
    match n {
        Num::Int(i) => Ok(Number::from(*i)),
        // serde_json reads integers beyond `u64` as the nearest `f64`, as jq does.
        Num::BigInt(i) => parse_number(&i.to_string()),
        Num::Dec(digits) => parse_number(digits),
        Num::Float(f) => Number::from_f64(*f).ok_or_else(|| {
            Unrepresentable::new(if f.is_nan() {
                "NaN"
            } else {
                "an infinite number"
            })
        }),
    }
}

fn parse_number(digits: &str) -> Result<Number, Unrepresentable> {
    digits
        .parse::<Number>()
        .ok()
        .filter(|n| n.as_f64().is_some_and(f64::is_finite))
        .ok_or_else(|| Unrepresentable::new(format!("the number {digits} is out of range")))
}

/// Converts a jaq exception into a run error without ever ending the process.
///
/// `jaq_core::unwrap_valr` is not used because it calls `std::process::exit` on `halt`.
fn run_error(exn: Exn<'_, Val>) -> RunError {
    let message = match exn.get_err() {
        Ok(error) => text(&error.into_val()),
        Err(exn) => match exn.get_halt() {
            Ok(code) => format!("halted with exit code {code}"),
            Err(exn) => format!("internal jaq error: {exn:?}"),
        },
    };
    RunError::Jq {
        message: truncate(message, MESSAGE_BYTES_MAX),
    }
}

/// A string's text, or any other value as JSON text.
fn text(value: &Val) -> String {
    match value {
        Val::TStr(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => other.to_string(),
    }
}

fn truncate(mut s: String, bytes_max: usize) -> String {
    if s.len() > bytes_max {
        let mut end = bytes_max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Compiles and runs `program` on `input` (JSON text) and renders the result: one compact
    /// JSON text per output, one per line, or `error: ` and the error's message.
    fn render(program: &str, input: &str) -> String {
        let input: Value = serde_json::from_str(input).expect("test input is JSON");
        let result = Program::compile(program)
            .map_err(|e| e.to_string())
            .and_then(|p| p.run(input).map_err(|e| e.to_string()));
        match result {
            Ok(outputs) => outputs
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            Err(message) => format!("error: {message}"),
        }
    }

    /// Asserts that `program` on `input` gives `expect`: the outputs as JSON texts, one per line
    /// (compared as values, since output objects have sorted keys), or `error: ` and a message.
    #[track_caller]
    fn check(program: &str, input: &str, expect: &str) {
        let expect = if expect.starts_with("error: ") {
            expect.to_owned()
        } else {
            let outputs = expect.lines().map(|line| {
                let value: Value = serde_json::from_str(line).expect("expected output is JSON");
                value.to_string()
            });
            outputs.collect::<Vec<_>>().join("\n")
        };
        let actual = render(program, input);
        assert_eq!(actual, expect, "program `{program}` on {input}");
    }

    /// Asserts that `program` fails to compile with a message that contains every part.
    #[track_caller]
    fn check_compile_error(program: &str, parts: &[&str]) -> CompileError {
        let error = Program::compile(program).expect_err(program);
        let message = error.to_string();
        for part in parts {
            assert!(
                message.contains(part),
                "`{program}`: {message:?} lacks {part:?}"
            );
        }
        error
    }

    fn compile(program: &str) -> Program {
        Program::compile(program).unwrap_or_else(|e| panic!("`{program}`: {e}"))
    }

    #[test]
    fn program_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<Program>();
        assert_send_sync::<Chain>();
    }

    #[test]
    fn maps_filters_and_splits() {
        let reading = r#"{"gear":"thermo-1","data":{"id":42,"temp":21.5,"unit":"C"}}"#;
        check(".", reading, reading);
        check(
            r#"{specversion: "1.0", id: (.data.id | tostring), source: "gear", type: "reading",
                data: .data}"#,
            reading,
            r#"{"specversion":"1.0","id":"42","source":"gear","type":"reading","data":{"id":42,"temp":21.5,"unit":"C"}}"#,
        );
        check("select(.data.temp > 30)", reading, "");
        check("select(.data.temp > 20) | .gear", reading, r#""thermo-1""#);
        check(
            ".items[]",
            r#"{"items":[1,"two",{"n":3}]}"#,
            "1\n\"two\"\n{\"n\":3}",
        );
        check(".items[] | select(. > 1)", r#"{"items":[1,2,3]}"#, "2\n3");
        check("empty", "{}", "");
        check(".missing", "{}", "null");
        check("debug | stderr | debug(\"msg\") | .a", r#"{"a":1}"#, "1");
    }

    #[test]
    fn string_and_time_functions() {
        let cases = [
            (r#".s | ascii_downcase"#, r#"{"s":"MiXeD"}"#, r#""mixed""#),
            (r#".s | ascii_upcase"#, r#"{"s":"MiXeD"}"#, r#""MIXED""#),
            (r#".s | test("^ab+c$")"#, r#"{"s":"abbbc"}"#, "true"),
            (r#".s | test("^x")"#, r#"{"s":"abc"}"#, "false"),
            (r#".s | split(",")"#, r#"{"s":"a,b,c"}"#, r#"["a","b","c"]"#),
            (r#".s | sub("b+"; "-")"#, r#"{"s":"abbbc"}"#, r#""a-c""#),
            (r#".n | tostring"#, r#"{"n":12}"#, r#""12""#),
            (r#".s | tonumber"#, r#"{"s":"12.5"}"#, "12.5"),
            (
                r#".s | tonumber"#,
                r#"{"s":"9007199254740993"}"#,
                "9007199254740993",
            ),
            (r#""\(.a)-\(.b)""#, r#"{"a":1,"b":"x"}"#, r#""1-x""#),
            (
                r#".t | todate"#,
                r#"{"t":1700000000}"#,
                r#""2023-11-14T22:13:20Z""#,
            ),
            (
                r#".s | fromdate"#,
                r#"{"s":"2023-11-14T22:13:20Z"}"#,
                "1700000000",
            ),
            (r#"now | type"#, "null", r#""number""#),
            (
                r#"[.[] | ltrimstr("x")] | join("+")"#,
                r#"["xa","b"]"#,
                r#""a+b""#,
            ),
            (r#".s | @base64"#, r#"{"s":"hi"}"#, r#""aGk=""#),
            (
                r#"to_entries | map(.key) | sort"#,
                r#"{"b":1,"a":2}"#,
                r#"["a","b"]"#,
            ),
        ];
        for (program, input, expect) in cases {
            check(program, input, expect);
        }
    }

    #[test]
    fn chain_feeds_every_output_into_the_next_step() {
        let chain = Chain::new(vec![
            compile(".readings[]"),
            compile("select(.temp >= 20)"),
            compile(r#"{type: "reading", data: .}"#),
        ]);
        assert!(!chain.is_empty());
        assert_eq!(chain.programs().len(), 3);
        let input = json!({"readings": [{"temp": 19}, {"temp": 20}, {"temp": 25}]});
        assert_eq!(
            chain.run(input).unwrap(),
            vec![
                json!({"type": "reading", "data": {"temp": 20}}),
                json!({"type": "reading", "data": {"temp": 25}}),
            ]
        );
        // A step that filters everything out ends the chain with no outputs.
        let chain = Chain::new(vec![
            compile("select(false)"),
            compile(r#"error("unreached")"#),
        ]);
        assert_eq!(chain.run(json!(1)).unwrap(), Vec::<Value>::new());
        // The first error of any step is the chain's error.
        let chain = Chain::new(vec![compile(".[]"), compile(". + 1")]);
        assert_eq!(
            chain.run(json!([1, "x"])).unwrap_err(),
            RunError::Jq {
                message: r#"cannot calculate "x" + 1"#.to_owned()
            }
        );
    }

    #[test]
    fn empty_chain_passes_input_through() {
        let chain = Chain::default();
        assert!(chain.is_empty());
        assert_eq!(chain.run(json!({"a": 1})).unwrap(), vec![json!({"a": 1})]);
    }

    #[test]
    fn compile_errors_name_what_and_where() {
        check_compile_error(
            ".a | foo",
            &["undefined function `foo/0` at 1:6 near `foo`"],
        );
        check_compile_error(
            ".a |\n  map(.b; .c)",
            &["undefined function `map/2` at 2:3"],
        );
        check_compile_error("$nope", &["undefined variable `$nope` at 1:1"]);
        check_compile_error(".a | )", &["unexpected character at 1:6 near `)`"]);
        check_compile_error(
            "[1, 2",
            &["missing `]` to close `[` at 1:6 (end of program)"],
        );
        check_compile_error(r#""abc"#, &["missing `\"` to close `\"`"]);
        check_compile_error(".a +", &["expected term at 1:5 (end of program)"]);
        check_compile_error(
            "if .a then 1",
            &["expected else or end at 1:13 (end of program)"],
        );
        check_compile_error(".a ~ 1", &["unexpected character at 1:4 near `~ 1`"]);
        check_compile_error("1 2", &["unexpected token at 1:3 near `2`"]);
        let error = check_compile_error("foo | bar", &["`foo/0` at 1:1", "`bar/0` at 1:7"]);
        let CompileError::Invalid { problems } = error else {
            panic!("expected Invalid, got {error:?}");
        };
        assert_eq!(problems.len(), 2);
        assert_eq!(
            problems[1].at,
            Some(Position {
                offset: 6,
                line: 1,
                column: 7
            })
        );
        assert_eq!(problems[1].near.as_deref(), Some("bar"));
    }

    #[test]
    fn compile_rejects_programs_over_the_length_limit() {
        let source = format!(". {}", " ".repeat(PROGRAM_BYTES_MAX - 2));
        assert_eq!(source.len(), PROGRAM_BYTES_MAX);
        compile(&source);
        let source = format!("{source} ");
        assert_eq!(
            Program::compile(&source).unwrap_err(),
            CompileError::TooLong {
                len: PROGRAM_BYTES_MAX + 1,
                max: PROGRAM_BYTES_MAX
            }
        );
    }

    /// The deepest program of each shape that [`check_depth`] accepts, with how many levels it has.
    fn deepest_accepted(shape: impl Fn(usize) -> String) -> (usize, String) {
        let mut n = 1;
        while check_depth(&shape(n + 1)).is_ok() {
            n += 1;
            assert!(n < PROGRAM_BYTES_MAX, "the depth check accepts any depth");
        }
        (n, shape(n))
    }

    fn nested(open: &str, middle: &str, close: &str) -> impl Fn(usize) -> String {
        move |n| format!("{}{middle}{}", open.repeat(n), close.repeat(n))
    }

    fn chained(first: &str, link: &str) -> impl Fn(usize) -> String {
        move |n| format!("{first}{}", link.repeat(n))
    }

    #[test]
    fn deepest_accepted_programs_compile_and_run_on_a_small_stack() {
        type Shape = Box<dyn Fn(usize) -> String>;
        let shapes: Vec<(&str, Shape)> = vec![
            ("parens", Box::new(nested("(", ".", ")"))),
            ("arrays", Box::new(nested("[", ".", "]"))),
            ("objects", Box::new(nested("{a: ", ".", "}"))),
            ("interpolations", Box::new(nested(r#""\("#, ".", r#")""#))),
            ("calls", Box::new(nested("first(", ".", ")"))),
            ("ifs", Box::new(nested("if . then ", ".", " else . end"))),
            ("reduces", Box::new(nested("reduce . as $x (.; ", ".", ")"))),
            ("defs", Box::new(nested("def f: ", ".", "; f"))),
            ("tries", Box::new(chained("(.)", "?"))),
            ("negations", Box::new(chained("1", "-1"))),
            ("sums", Box::new(chained("1", " + 1"))),
            ("pipes", Box::new(chained(".", " | ."))),
            ("commas", Box::new(|n| format!("[{}1]", "1, ".repeat(n)))),
            ("alternatives", Box::new(chained(".a", " // .a"))),
            ("bindings", Box::new(chained(".", " as $x | ."))),
        ];
        // A tokio worker's default stack.
        const STACK_BYTES: usize = 2 << 20;
        for (name, shape) in shapes {
            let (levels, program) = deepest_accepted(shape);
            assert!(levels >= 20, "{name}: only {levels} levels accepted");
            let run = std::thread::Builder::new()
                .stack_size(STACK_BYTES)
                .spawn(move || compile(&program).run(json!({"a": 1})).map(|o| o.len()))
                .unwrap();
            let outputs = run.join().unwrap_or_else(|_| panic!("{name} panicked"));
            // Deeply nested outputs are refused, but only after the program ran.
            let ran = matches!(outputs, Ok(_) | Err(RunError::NotRepresentable { .. }));
            assert!(ran, "{name} at {levels} levels: {outputs:?}");
        }
    }

    #[test]
    fn compile_rejects_programs_over_the_depth_limit() {
        let program = format!("{}.{}", "[".repeat(300), "]".repeat(300));
        assert_eq!(
            Program::compile(&program).unwrap_err(),
            CompileError::TooDeep {
                at: Position {
                    offset: PROGRAM_DEPTH_MAX,
                    line: 1,
                    column: PROGRAM_DEPTH_MAX + 1
                },
                max: PROGRAM_DEPTH_MAX
            }
        );
        let program = format!(".{}", " | .".repeat(5000));
        check_compile_error(&program, &["nests too deeply at 1:"]);
        // Brackets inside strings and comments do not count; interpolations do.
        compile(&format!(r#""{}" # {}"#, "[".repeat(300), "(".repeat(300)));
        assert!(Program::compile(&nested(r#""\("#, ".", r#")""#)(300)).is_err());
        // Object entries are siblings, so a wide object is not deep.
        let fields: Vec<String> = (0..500).map(|i| format!("f{i}: .a")).collect();
        compile(&format!("{{{}}}", fields.join(", ")));
        // Definitions are siblings too.
        compile(&format!("{}.", "def f: . | . | .; ".repeat(500)));
    }

    #[test]
    fn runtime_errors_keep_their_message() {
        check(
            r#"error("bad reading")"#,
            "{}",
            "error: jq error: bad reading",
        );
        check(
            ".a + 1",
            r#"{"a":"x"}"#,
            r#"error: jq error: cannot calculate "x" + 1"#,
        );
        check(
            r#"error({code: 7})"#,
            "{}",
            r#"error: jq error: {"code":7}"#,
        );
        check(
            ".a.b",
            r#"{"a":"x"}"#,
            r#"error: jq error: cannot index "x" with "b""#,
        );
        check("try error(\"x\") catch .", "{}", r#""x""#);
        // Errors from earlier outputs discard them: a run is all or nothing.
        check(r#"1, error("late")"#, "{}", "error: jq error: late");
        let long = "x".repeat(10 * MESSAGE_BYTES_MAX);
        let error = compile("error(.)").run(json!(long)).unwrap_err();
        let RunError::Jq { message } = error else {
            panic!("expected Jq, got {error:?}");
        };
        assert!(message.len() <= MESSAGE_BYTES_MAX + '…'.len_utf8());
        assert!(message.ends_with('…'));
    }

    #[test]
    fn halt_fails_the_run_instead_of_ending_the_process() {
        check(
            r#""bad reading" | halt_error"#,
            "{}",
            "error: jq error: halted with exit code 5: bad reading",
        );
        check(
            "halt_error(1)",
            r#"{"a":1}"#,
            r#"error: jq error: halted with exit code 1: {"a":1}"#,
        );
        check(
            "halt",
            "null",
            "error: jq error: halted with exit code 0: null",
        );
    }

    #[test]
    fn outputs_are_bounded() {
        let too_many = format!("error: jq program produced more than {OUTPUTS_MAX} outputs");
        check("range(5000)", "null", &too_many);
        check("repeat(.)", "1", &too_many);
        check(
            ".[]",
            &serde_json::to_string(&vec![0; OUTPUTS_MAX + 1]).unwrap(),
            &too_many,
        );
        let at_limit = compile(&format!("range({OUTPUTS_MAX})")).run(json!(null));
        assert_eq!(at_limit.unwrap().len(), OUTPUTS_MAX);
        // In a chain, the limit applies to each step's outputs summed over all its inputs.
        let chain = Chain::new(vec![compile("range(40)"), compile("range(40)")]);
        assert_eq!(
            chain.run(json!(null)).unwrap_err(),
            RunError::TooManyOutputs { max: OUTPUTS_MAX }
        );
        let chain = Chain::new(vec![compile("range(10)"), compile("range(100)")]);
        assert_eq!(chain.run(json!(null)).unwrap().len(), OUTPUTS_MAX);
    }

    #[test]
    fn large_integers_round_trip_exactly() {
        let ids = json!([
            9_007_199_254_740_993_u64,
            i64::MAX,
            i64::MIN,
            u64::MAX,
            -9_007_199_254_740_993_i64,
            0.1,
            1.5,
            1e300
        ]);
        assert_eq!(compile(".").run(ids.clone()).unwrap(), vec![ids]);
        check(".id + 1", r#"{"id":9007199254740993}"#, "9007199254740994");
        check(
            ".id | tostring",
            r#"{"id":9223372036854775807}"#,
            r#""9223372036854775807""#,
        );
        check(
            ".id == 9007199254740992",
            r#"{"id":9007199254740993}"#,
            "false",
        );
        check(
            "[.[] | . * 2]",
            "[4611686018427387904]",
            "[9223372036854775808]",
        );
        // Past `u64`, integers become the nearest `f64`, as in jq.
        check(". + 1", "18446744073709551615", "1.8446744073709552e+19");
        check("1.50", "null", "1.5");
    }

    #[test]
    fn outputs_that_are_not_json_are_errors() {
        let cases = [
            (
                "nan",
                "null",
                "error: jq output at `.` is not representable as JSON: NaN",
            ),
            (
                "{a: [1, infinite]}",
                "null",
                "error: jq output at `.a[1]` is not representable as JSON: an infinite number",
            ),
            (
                r#"{"odd key": 1e1000}"#,
                "null",
                r#"error: jq output at `.["odd key"]` is not representable as JSON: the number 1e1000 is out of range"#,
            ),
            (
                "tobytes",
                r#""ab""#,
                "error: jq output at `.` is not representable as JSON: a byte string (made by \
                 `tobytes`); convert it with `@base64` first",
            ),
        ];
        for (program, input, expect) in cases {
            check(program, input, expect);
        }
        let deep = compile("reduce range(200) as $i (0; [.])").run(json!(null));
        let Err(RunError::NotRepresentable { path, reason }) = deep else {
            panic!("expected NotRepresentable, got {deep:?}");
        };
        assert_eq!(path, format!(".{}", "[0]".repeat(VALUE_DEPTH_MAX)));
        assert_eq!(
            reason,
            format!("nested deeper than {VALUE_DEPTH_MAX} levels")
        );
        let at_limit = format!("reduce range({VALUE_DEPTH_MAX}) as $i (0; [.])");
        assert!(compile(&at_limit).run(json!(null)).is_ok());
    }

    #[test]
    fn routing_conditions() {
        for (value, expect) in [
            (json!(null), false),
            (json!(false), false),
            (json!(true), true),
            (json!(0), true),
            (json!(""), true),
            (json!([]), true),
            (json!({}), true),
        ] {
            assert_eq!(truthy(&value), expect, "{value}");
        }
        let event = json!({"type": "reading", "data": {"temp": 31, "zero": 0}});
        let cases = [
            (r#".type == "reading""#, true),
            (".data.temp > 30", true),
            (".data.temp > 40", false),
            (".data.missing", false),
            (".data.zero", true),
            ("empty", false),
            ("false, true", false),
            (r#"true, error("never computed")"#, true),
            (r#".type | test("^read")"#, true),
        ];
        for (condition, expect) in cases {
            assert_eq!(
                matches(&compile(condition), &event).unwrap(),
                expect,
                "{condition}"
            );
        }
        assert_eq!(
            matches(&compile(r#"error("no route")"#), &event).unwrap_err(),
            RunError::Jq {
                message: "no route".to_owned()
            }
        );
        // A NaN condition is truthy even though it is not JSON.
        assert!(matches(&compile("nan"), &event).unwrap());
    }

    /// Set in the environment of the child process that
    /// `environment_is_not_readable` starts.
    const SECRET_VAR: &str = "GEARBOX_TRANSFORM_TEST_SECRET";
    const SECRET: &str = "hunter2-do-not-leak";

    #[test]
    fn environment_is_not_readable() {
        if std::env::var(SECRET_VAR).as_deref() != Ok(SECRET) {
            // Setting a variable in this process needs `unsafe`, so run this test again in a
            // child process whose environment holds the secret.
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "transform::tests::environment_is_not_readable"])
                .args(["--nocapture", "--test-threads=1"])
                .env(SECRET_VAR, SECRET)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "child failed: {stdout}\n{stderr}");
            assert!(stdout.contains("1 passed"), "child ran no test: {stdout}");
        }
        let path = std::env::var("PATH").unwrap_or_default();
        let attempts = [
            "env",
            "$ENV",
            "env.GEARBOX_TRANSFORM_TEST_SECRET",
            "$ENV.GEARBOX_TRANSFORM_TEST_SECRET",
            "$ENV | tostring",
            "[env[]]",
            "def env: {}; env",
            "{} as $ENV | $ENV",
        ];
        for program in attempts {
            let result = render(program, "{}");
            assert!(!result.contains(SECRET), "`{program}` leaked: {result}");
            assert!(
                path.is_empty() || !result.contains(&path),
                "`{program}` leaked PATH"
            );
        }
        check_compile_error(
            "env.GEARBOX_TRANSFORM_TEST_SECRET",
            &[
                "undefined function `env/0` at 1:1",
                "cannot read the process environment",
            ],
        );
        check_compile_error(
            "$ENV.HOME",
            &[
                "undefined variable `$ENV` at 1:1",
                "cannot read the process environment",
            ],
        );
        // Programs may define their own `env` or bind `$ENV`; neither reads the environment.
        check("def env: {}; env", "{}", "{}");
        check("{} as $ENV | $ENV", "{}", "{}");
    }

    #[test]
    fn inputs_files_and_modules_are_unavailable() {
        let cases: [(&str, &[&str]); 8] = [
            (
                "input",
                &[
                    "undefined function `input/0` at 1:1 near `input`: a Gearbox transform sees exactly one event",
                ],
            ),
            ("[inputs]", &["undefined function `inputs/0` at 1:2"]),
            ("input_filename", &["`input_filename/0`", "no input files"]),
            ("$__prog_args", &["`$__prog_args`", "no input files"]),
            ("$__loc__", &["`$__loc__`"]),
            (
                r#"include "secrets"; ."#,
                &["cannot import `secrets` at 1:10", "`include`"],
            ),
            (
                r#"import "lib" as lib; lib::f"#,
                &["cannot import `lib` at 1:9"],
            ),
            (
                r#"import "/etc/passwd" as $data; $data"#,
                &["cannot import `/etc/passwd` at 1:9"],
            ),
        ];
        for (program, parts) in cases {
            check_compile_error(program, parts);
        }
    }

    #[test]
    fn debug_prints_the_source() {
        let program = compile(".data | {id}");
        assert_eq!(program.source(), ".data | {id}");
        assert_eq!(format!("{program:?}"), r#"Program(".data | {id}")"#);
        let chain = Chain::new(vec![program.clone()]);
        assert_eq!(
            format!("{chain:?}"),
            r#"Chain { programs: [Program(".data | {id}")] }"#
        );
    }
}
