//! The subset of CEL that CRD validation rules (`x-kubernetes-validations`) use in this project,
//! parsed when a CRD is registered and evaluated on every write of a custom resource.
//!
//! Supported: `self` and `oldSelf` (a rule naming `oldSelf` is a transition rule, skipped on
//! create); integer, unsigned, double, string, bool, null and list literals; field selection
//! (`self.a.b`), indexing (`self.items[0]`, `self.labels['k']`); `has(self.field)`; `size(x)` and
//! `x.size()`; `startsWith`, `endsWith`, `contains` on strings; `+ - * / %` with CEL's overflow
//! and division errors; `== != < <= > >=` (with CEL's heterogeneous numeric comparison); `in`;
//! `! && ||` with CEL's commutative error absorption; and `cond ? a : b`.
//!
//! Anything else is refused when the rule is compiled, so a CRD whose rules this server cannot
//! enforce fails loudly at registration instead of being accepted unchecked.

use serde_json::{Map, Number, Value};

/// A parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    expr: Expr,
    /// Names `oldSelf`: evaluated only on updates where the old value exists.
    pub transition: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Literal(Val),
    List(Vec<Expr>),
    SelfValue,
    OldSelf,
    Select(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Has(Box<Expr>, String),
    Call(Function, Vec<Expr>),
    Not(Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Conditional(Box<Expr>, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Size,
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

/// A CEL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    String(String),
    List(Vec<Val>),
    Map(Map<String, Value>),
}

impl Val {
    fn from_json(value: &Value) -> Val {
        match value {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Val::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Val::Uint(u)
                } else {
                    Val::Double(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => Val::String(s.clone()),
            Value::Array(items) => Val::List(items.iter().map(Val::from_json).collect()),
            Value::Object(map) => Val::Map(map.clone()),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "null_type",
            Val::Bool(_) => "bool",
            Val::Int(_) => "int",
            Val::Uint(_) => "uint",
            Val::Double(_) => "double",
            Val::String(_) => "string",
            Val::List(_) => "list",
            Val::Map(_) => "map",
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Uint(u) => Some(*u as f64),
            Val::Double(d) => Some(*d),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Int(i) => Value::Number((*i).into()),
            Val::Uint(u) => Value::Number((*u).into()),
            Val::Double(d) => Number::from_f64(*d).map_or(Value::Null, Value::Number),
            Val::String(s) => Value::String(s.clone()),
            Val::List(items) => Value::Array(items.iter().map(Val::to_json).collect()),
            Val::Map(map) => Value::Object(map.clone()),
        }
    }
}

/// Why a rule could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError(pub String);

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "compilation failed: {}", self.0)
    }
}

/// Why a rule could not be evaluated (not the same as evaluating to false).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl Program {
    pub fn compile(source: &str) -> Result<Program, CompileError> {
        let tokens = tokenize(source)?;
        let mut parser = Parser {
            tokens,
            position: 0,
            transition: false,
        };
        let expr = parser.expression()?;
        if parser.position != parser.tokens.len() {
            return Err(CompileError(format!(
                "unexpected {} after the expression",
                parser.tokens[parser.position].describe()
            )));
        }
        Ok(Program {
            expr,
            transition: parser.transition,
        })
    }

    /// Evaluates the rule; `Ok(true)` when the value satisfies it.
    pub fn evaluate(&self, value: &Value, old: Option<&Value>) -> Result<bool, EvalError> {
        let scope = Scope { value, old };
        match scope.eval(&self.expr)? {
            Val::Bool(b) => Ok(b),
            other => Err(EvalError(format!(
                "rule evaluated to {}, not bool",
                other.type_name()
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Ident(String),
    Symbol(&'static str),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Int(i) => format!("number {i}"),
            Token::Uint(u) => format!("number {u}u"),
            Token::Double(d) => format!("number {d}"),
            Token::Str(s) => format!("string {s:?}"),
            Token::Ident(name) => format!("identifier {name:?}"),
            Token::Symbol(s) => format!("{s:?}"),
        }
    }
}

const SYMBOLS: [&str; 22] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[", "]",
    ".", ",", "?", ":",
];

fn tokenize(source: &str) -> Result<Vec<Token>, CompileError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                if chars[i] == '.' && !chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                    break;
                }
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            tokens.push(number(&text)?);
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == '"' || c == '\'' {
            i += 1;
            let mut text = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(CompileError("unterminated string literal".into())),
                    Some(&q) if q == c => break,
                    Some('\\') => {
                        let escaped = chars
                            .get(i + 1)
                            .copied()
                            .ok_or_else(|| CompileError("unterminated string literal".into()))?;
                        text.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            '\\' | '"' | '\'' => escaped,
                            other => {
                                return Err(CompileError(format!(
                                    "unsupported escape sequence \\{other}"
                                )))
                            }
                        });
                        i += 1;
                    }
                    Some(&other) => text.push(other),
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Str(text));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let symbol = SYMBOLS
                .iter()
                .find(|s| rest.starts_with(**s))
                .ok_or_else(|| CompileError(format!("unexpected character {c:?}")))?;
            tokens.push(Token::Symbol(symbol));
            i += symbol.len();
        }
    }
    Ok(tokens)
}

fn number(text: &str) -> Result<Token, CompileError> {
    let bad = || CompileError(format!("invalid number {text:?}"));
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16)
            .map(Token::Int)
            .map_err(|_| bad());
    }
    if let Some(unsigned) = text.strip_suffix(['u', 'U']) {
        return unsigned.parse().map(Token::Uint).map_err(|_| bad());
    }
    if text.contains(['.', 'e', 'E']) {
        return text.parse().map(Token::Double).map_err(|_| bad());
    }
    text.parse().map(Token::Int).map_err(|_| bad())
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
    transition: bool,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn eat(&mut self, symbol: &str) -> bool {
        if matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, symbol: &str) -> Result<(), CompileError> {
        if self.eat(symbol) {
            Ok(())
        } else {
            Err(CompileError(format!(
                "expected {symbol:?}, found {}",
                self.peek()
                    .map_or_else(|| "the end".to_string(), Token::describe)
            )))
        }
    }

    fn expression(&mut self) -> Result<Expr, CompileError> {
        let condition = self.or()?;
        if self.eat("?") {
            let then = self.expression()?;
            self.expect(":")?;
            let otherwise = self.expression()?;
            return Ok(Expr::Conditional(
                Box::new(condition),
                Box::new(then),
                Box::new(otherwise),
            ));
        }
        Ok(condition)
    }

    fn or(&mut self) -> Result<Expr, CompileError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, CompileError> {
        let mut left = self.relation()?;
        while self.eat("&&") {
            left = Expr::And(Box::new(left), Box::new(self.relation()?));
        }
        Ok(left)
    }

    fn relation(&mut self) -> Result<Expr, CompileError> {
        let left = self.addition()?;
        let op = match self.peek() {
            Some(Token::Symbol("==")) => BinaryOp::Eq,
            Some(Token::Symbol("!=")) => BinaryOp::Ne,
            Some(Token::Symbol("<")) => BinaryOp::Lt,
            Some(Token::Symbol("<=")) => BinaryOp::Le,
            Some(Token::Symbol(">")) => BinaryOp::Gt,
            Some(Token::Symbol(">=")) => BinaryOp::Ge,
            Some(Token::Ident(word)) if word == "in" => BinaryOp::In,
            _ => return Ok(left),
        };
        self.position += 1;
        let right = self.addition()?;
        Ok(Expr::Binary(op, Box::new(left), Box::new(right)))
    }

    fn addition(&mut self) -> Result<Expr, CompileError> {
        let mut left = self.multiplication()?;
        loop {
            let op = if self.eat("+") {
                BinaryOp::Add
            } else if self.eat("-") {
                BinaryOp::Sub
            } else {
                return Ok(left);
            };
            left = Expr::Binary(op, Box::new(left), Box::new(self.multiplication()?));
        }
    }

    fn multiplication(&mut self) -> Result<Expr, CompileError> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat("*") {
                BinaryOp::Mul
            } else if self.eat("/") {
                BinaryOp::Div
            } else if self.eat("%") {
                BinaryOp::Rem
            } else {
                return Ok(left);
            };
            left = Expr::Binary(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, CompileError> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(Expr::Negate(Box::new(self.unary()?)));
        }
        self.member()
    }

    fn member(&mut self) -> Result<Expr, CompileError> {
        let mut expr = self.primary()?;
        loop {
            if self.eat(".") {
                let name = self.identifier()?;
                if self.eat("(") {
                    let function = match name.as_str() {
                        "size" => Function::Size,
                        "startsWith" => Function::StartsWith,
                        "endsWith" => Function::EndsWith,
                        "contains" => Function::Contains,
                        other => return Err(unsupported_function(other)),
                    };
                    let mut args = vec![expr];
                    args.extend(self.arguments()?);
                    expr = call(function, args)?;
                } else {
                    expr = Expr::Select(Box::new(expr), name);
                }
            } else if self.eat("[") {
                let index = self.expression()?;
                self.expect("]")?;
                expr = Expr::Index(Box::new(expr), Box::new(index));
            } else {
                return Ok(expr);
            }
        }
    }

    fn identifier(&mut self) -> Result<String, CompileError> {
        match self.peek().cloned() {
            Some(Token::Ident(name)) => {
                self.position += 1;
                Ok(name)
            }
            other => Err(CompileError(format!(
                "expected a field name, found {}",
                other.map_or_else(|| "the end".to_string(), |t| t.describe())
            ))),
        }
    }

    /// The arguments after an opening parenthesis, through the closing one.
    fn arguments(&mut self) -> Result<Vec<Expr>, CompileError> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.expression()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn primary(&mut self) -> Result<Expr, CompileError> {
        let token = self
            .peek()
            .cloned()
            .ok_or_else(|| CompileError("unexpected end of expression".into()))?;
        self.position += 1;
        match token {
            Token::Int(i) => Ok(Expr::Literal(Val::Int(i))),
            Token::Uint(u) => Ok(Expr::Literal(Val::Uint(u))),
            Token::Double(d) => Ok(Expr::Literal(Val::Double(d))),
            Token::Str(s) => Ok(Expr::Literal(Val::String(s))),
            Token::Symbol("(") => {
                let inner = self.expression()?;
                self.expect(")")?;
                Ok(inner)
            }
            Token::Symbol("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.expression()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::List(items))
            }
            Token::Ident(name) => {
                if self.eat("(") {
                    return match name.as_str() {
                        "has" => {
                            let mut args = self.arguments()?;
                            match (args.pop(), args.is_empty()) {
                                (Some(Expr::Select(target, field)), true) => {
                                    Ok(Expr::Has(target, field))
                                }
                                _ => Err(CompileError(
                                    "invalid argument to has() macro: it takes one field \
                                     selection, such as has(self.field)"
                                        .into(),
                                )),
                            }
                        }
                        "size" => {
                            let args = self.arguments()?;
                            call(Function::Size, args)
                        }
                        other => Err(unsupported_function(other)),
                    };
                }
                match name.as_str() {
                    "self" => Ok(Expr::SelfValue),
                    "oldSelf" => {
                        self.transition = true;
                        Ok(Expr::OldSelf)
                    }
                    "true" => Ok(Expr::Literal(Val::Bool(true))),
                    "false" => Ok(Expr::Literal(Val::Bool(false))),
                    "null" => Ok(Expr::Literal(Val::Null)),
                    other => Err(CompileError(format!(
                        "undeclared reference to '{other}' (this server knows self and oldSelf)"
                    ))),
                }
            }
            other => Err(CompileError(format!("unexpected {}", other.describe()))),
        }
    }
}

fn unsupported_function(name: &str) -> CompileError {
    CompileError(format!(
        "function '{name}' is not supported by this server's CEL subset \
         (has, size, startsWith, endsWith, contains)"
    ))
}

fn call(function: Function, args: Vec<Expr>) -> Result<Expr, CompileError> {
    let arity = match function {
        Function::Size => 1,
        Function::StartsWith | Function::EndsWith | Function::Contains => 2,
    };
    if args.len() != arity {
        return Err(CompileError(format!(
            "{function:?} takes {arity} argument(s), got {}",
            args.len()
        )));
    }
    Ok(Expr::Call(function, args))
}

struct Scope<'a> {
    value: &'a Value,
    old: Option<&'a Value>,
}

fn no_overload(op: &str, left: &Val, right: &Val) -> EvalError {
    EvalError(format!(
        "no such overload: {} {op} {}",
        left.type_name(),
        right.type_name()
    ))
}

fn overflow() -> EvalError {
    EvalError("integer overflow".into())
}

impl Scope<'_> {
    fn eval(&self, expr: &Expr) -> Result<Val, EvalError> {
        match expr {
            Expr::Literal(v) => Ok(v.clone()),
            Expr::List(items) => Ok(Val::List(
                items
                    .iter()
                    .map(|e| self.eval(e))
                    .collect::<Result<_, _>>()?,
            )),
            Expr::SelfValue => Ok(Val::from_json(self.value)),
            Expr::OldSelf => self
                .old
                .map(Val::from_json)
                .ok_or_else(|| EvalError("oldSelf is not available on create".into())),
            Expr::Select(target, field) => match self.eval(target)? {
                Val::Map(map) => map
                    .get(field)
                    .map(Val::from_json)
                    .ok_or_else(|| EvalError(format!("no such key: {field}"))),
                other => Err(EvalError(format!(
                    "cannot select field '{field}' of a {}",
                    other.type_name()
                ))),
            },
            Expr::Has(target, field) => match self.eval(target)? {
                Val::Map(map) => Ok(Val::Bool(map.contains_key(field))),
                other => Err(EvalError(format!(
                    "has() on a {} (only objects have fields)",
                    other.type_name()
                ))),
            },
            Expr::Index(target, index) => {
                let target = self.eval(target)?;
                let index = self.eval(index)?;
                match (&target, &index) {
                    (Val::List(items), Val::Int(_) | Val::Uint(_)) => {
                        let i = index.as_f64().unwrap_or(-1.0);
                        if i < 0.0 || i as usize >= items.len() {
                            Err(EvalError(format!("index out of range: {i}")))
                        } else {
                            Ok(items[i as usize].clone())
                        }
                    }
                    (Val::Map(map), Val::String(key)) => map
                        .get(key)
                        .map(Val::from_json)
                        .ok_or_else(|| EvalError(format!("no such key: {key}"))),
                    _ => Err(no_overload("[]", &target, &index)),
                }
            }
            Expr::Call(function, args) => {
                let args: Vec<Val> = args
                    .iter()
                    .map(|a| self.eval(a))
                    .collect::<Result<_, _>>()?;
                call_function(*function, &args)
            }
            Expr::Not(inner) => match self.eval(inner)? {
                Val::Bool(b) => Ok(Val::Bool(!b)),
                other => Err(EvalError(format!(
                    "no such overload: !{}",
                    other.type_name()
                ))),
            },
            Expr::Negate(inner) => match self.eval(inner)? {
                Val::Int(i) => i.checked_neg().map(Val::Int).ok_or_else(overflow),
                Val::Double(d) => Ok(Val::Double(-d)),
                other => Err(EvalError(format!(
                    "no such overload: -{}",
                    other.type_name()
                ))),
            },
            // CEL's logical operators are commutative: an error on one side is absorbed when
            // the other side decides the result.
            Expr::And(left, right) => match (self.bool(left), self.bool(right)) {
                (Ok(false), _) | (_, Ok(false)) => Ok(Val::Bool(false)),
                (Ok(true), Ok(true)) => Ok(Val::Bool(true)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            },
            Expr::Or(left, right) => match (self.bool(left), self.bool(right)) {
                (Ok(true), _) | (_, Ok(true)) => Ok(Val::Bool(true)),
                (Ok(false), Ok(false)) => Ok(Val::Bool(false)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            },
            Expr::Conditional(condition, then, otherwise) => {
                if self.bool(condition)? {
                    self.eval(then)
                } else {
                    self.eval(otherwise)
                }
            }
            Expr::Binary(op, left, right) => {
                let left = self.eval(left)?;
                let right = self.eval(right)?;
                binary(*op, &left, &right)
            }
        }
    }

    fn bool(&self, expr: &Expr) -> Result<bool, EvalError> {
        match self.eval(expr)? {
            Val::Bool(b) => Ok(b),
            other => Err(EvalError(format!(
                "expected bool, got {}",
                other.type_name()
            ))),
        }
    }
}

fn call_function(function: Function, args: &[Val]) -> Result<Val, EvalError> {
    match (function, args) {
        (Function::Size, [Val::String(s)]) => Ok(Val::Int(s.chars().count() as i64)),
        (Function::Size, [Val::List(items)]) => Ok(Val::Int(items.len() as i64)),
        (Function::Size, [Val::Map(map)]) => Ok(Val::Int(map.len() as i64)),
        (Function::StartsWith, [Val::String(s), Val::String(p)]) => {
            Ok(Val::Bool(s.starts_with(p.as_str())))
        }
        (Function::EndsWith, [Val::String(s), Val::String(p)]) => {
            Ok(Val::Bool(s.ends_with(p.as_str())))
        }
        (Function::Contains, [Val::String(s), Val::String(p)]) => {
            Ok(Val::Bool(s.contains(p.as_str())))
        }
        _ => Err(EvalError(format!(
            "no such overload: {function:?}({})",
            args.iter()
                .map(Val::type_name)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn equal(left: &Val, right: &Val) -> bool {
    match (left.as_f64(), right.as_f64()) {
        (Some(l), Some(r)) => l == r,
        _ => left.to_json() == right.to_json(),
    }
}

fn binary(op: BinaryOp, left: &Val, right: &Val) -> Result<Val, EvalError> {
    use BinaryOp::*;
    match op {
        Eq => return Ok(Val::Bool(equal(left, right))),
        Ne => return Ok(Val::Bool(!equal(left, right))),
        In => {
            return match right {
                Val::List(items) => Ok(Val::Bool(items.iter().any(|i| equal(left, i)))),
                Val::Map(map) => match left {
                    Val::String(key) => Ok(Val::Bool(map.contains_key(key))),
                    _ => Err(no_overload("in", left, right)),
                },
                _ => Err(no_overload("in", left, right)),
            }
        }
        Lt | Le | Gt | Ge => {
            let ordering = match (left, right) {
                (Val::String(l), Val::String(r)) => l.partial_cmp(r),
                (Val::Bool(l), Val::Bool(r)) => l.partial_cmp(r),
                _ => match (left.as_f64(), right.as_f64()) {
                    (Some(l), Some(r)) => l.partial_cmp(&r),
                    _ => return Err(no_overload("<", left, right)),
                },
            };
            let Some(ordering) = ordering else {
                return Ok(Val::Bool(false));
            };
            return Ok(Val::Bool(match op {
                Lt => ordering.is_lt(),
                Le => ordering.is_le(),
                Gt => ordering.is_gt(),
                _ => ordering.is_ge(),
            }));
        }
        _ => {}
    }
    let symbol = match op {
        Add => "+",
        Sub => "-",
        Mul => "*",
        Div => "/",
        _ => "%",
    };
    match (left, right) {
        (Val::Int(l), Val::Int(r)) => {
            let (l, r) = (*l, *r);
            let result = match op {
                Add => l.checked_add(r),
                Sub => l.checked_sub(r),
                Mul => l.checked_mul(r),
                Div | Rem if r == 0 => {
                    return Err(EvalError(if op == Div {
                        "division by zero".into()
                    } else {
                        "modulus by zero".into()
                    }))
                }
                Div => l.checked_div(r),
                _ => l.checked_rem(r),
            };
            result.map(Val::Int).ok_or_else(overflow)
        }
        (Val::Uint(l), Val::Uint(r)) => {
            let (l, r) = (*l, *r);
            let result = match op {
                Add => l.checked_add(r),
                Sub => l.checked_sub(r),
                Mul => l.checked_mul(r),
                Div | Rem if r == 0 => return Err(EvalError("division by zero".into())),
                Div => l.checked_div(r),
                _ => l.checked_rem(r),
            };
            result.map(Val::Uint).ok_or_else(overflow)
        }
        (Val::Double(l), Val::Double(r)) => match op {
            Add => Ok(Val::Double(l + r)),
            Sub => Ok(Val::Double(l - r)),
            Mul => Ok(Val::Double(l * r)),
            Div => Ok(Val::Double(l / r)),
            _ => Err(no_overload(symbol, left, right)),
        },
        (Val::String(l), Val::String(r)) if op == Add => Ok(Val::String(format!("{l}{r}"))),
        (Val::List(l), Val::List(r)) if op == Add => {
            Ok(Val::List(l.iter().chain(r).cloned().collect()))
        }
        _ => Err(no_overload(symbol, left, right)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(rule: &str, value: Value) -> Result<bool, EvalError> {
        Program::compile(rule).unwrap().evaluate(&value, None)
    }

    #[test]
    fn odd_replicas_rule() {
        assert_eq!(check("self % 2 == 1", json!(3)), Ok(true));
        assert_eq!(check("self % 2 == 1", json!(4)), Ok(false));
    }

    #[test]
    fn has_guards_absent_fields_and_errors_are_absorbed_by_or() {
        let rule = "!has(self.heartbeatIntervalMillis) || !has(self.electionTimeoutMillis) || \
                    self.electionTimeoutMillis >= 5 * self.heartbeatIntervalMillis";
        assert_eq!(check(rule, json!({})), Ok(true));
        assert_eq!(
            check(rule, json!({"heartbeatIntervalMillis": 100})),
            Ok(true)
        );
        assert_eq!(
            check(
                rule,
                json!({"heartbeatIntervalMillis": 100, "electionTimeoutMillis": 1000})
            ),
            Ok(true)
        );
        assert_eq!(
            check(
                rule,
                json!({"heartbeatIntervalMillis": 100, "electionTimeoutMillis": 300})
            ),
            Ok(false)
        );
    }

    #[test]
    fn transition_rule_compares_with_the_old_value() {
        let program = Program::compile("self == oldSelf").unwrap();
        assert!(program.transition);
        let old = json!({"data": {"size": "8Gi"}});
        assert_eq!(program.evaluate(&old, Some(&old)), Ok(true));
        assert_eq!(
            program.evaluate(&json!({"data": {"size": "9Gi"}}), Some(&old)),
            Ok(false)
        );
    }

    #[test]
    fn missing_field_is_an_error_not_false() {
        assert!(check("self.a > 1", json!({})).is_err());
        assert!(check("self / 0 == 1", json!(3)).is_err());
    }

    #[test]
    fn strings_lists_and_conditionals() {
        assert_eq!(
            check("self.startsWith('kv-') && size(self) < 10", json!("kv-0")),
            Ok(true)
        );
        assert_eq!(check("self in ['a', 'b']", json!("b")), Ok(true));
        assert_eq!(
            check("self.size() == 2 ? self[1] == 2 : false", json!([1, 2])),
            Ok(true)
        );
        assert_eq!(check("self.x == 1.0", json!({"x": 1})), Ok(true));
    }

    #[test]
    fn unknown_functions_and_references_are_refused_at_compile_time() {
        assert!(Program::compile("self.all(x, x > 0)").is_err());
        assert!(Program::compile("quantity(self) > 1").is_err());
        assert!(Program::compile("other == 1").is_err());
        assert!(Program::compile("self ==").is_err());
        assert!(Program::compile("has(self)").is_err());
    }
}
