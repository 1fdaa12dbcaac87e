//! Label and field selectors, parsed and matched the way kube-apiserver does.
//!
//! Label selectors (`?labelSelector=`) follow the grammar of `k8s.io/apimachinery/pkg/labels`:
//! `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a` (exists), `!a` (does not exist),
//! `a>1`, `a<1`, joined by `,` (a conjunction), with blanks allowed between tokens. Keys and
//! values are validated with the Kubernetes rules and the same error texts, so a client sees what
//! it would see from a real cluster (`unable to parse requirement: ...`).
//!
//! Field selectors (`?fieldSelector=`) are `field=value`, `field==value` and `field!=value`,
//! joined by `,`; values may escape `\,`, `\=` and `\\`. A field path such as `spec.nodeName` is
//! looked up by walking the object's JSON; a missing field reads as the empty string. Which
//! fields a kind supports is the API's business: it asks [`FieldSelector::fields`] and answers
//! `field label not supported: <f>` for the others.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::validation::{label_key_errors, label_value_errors};

/// A selector that could not be parsed or built. The message is the one kube-apiserver gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    message: String,
}

impl SelectorError {
    fn new(message: impl Into<String>) -> Self {
        SelectorError {
            message: message.into(),
        }
    }

    /// The human-readable message (what goes into a Status' `message`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SelectorError {}

/// `<field>: Invalid value: "<value>": <detail>`, as `field.Invalid(...).Error()` prints it.
fn invalid(field: &str, value: &str, detail: &str) -> String {
    format!("{field}: Invalid value: {}: {detail}", go_quote(value))
}

/// A Go `%q` rendering, close enough for messages: JSON string escaping.
fn go_quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Several errors as `utilerrors.NewAggregate` prints them: one alone, or `[a, b]`.
fn aggregate(mut errs: Vec<String>) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    errs.retain(|e| seen.insert(e.clone()));
    match errs.len() {
        0 => None,
        1 => errs.pop(),
        _ => Some(format!("[{}]", errs.join(", "))),
    }
}

// ---------------------------------------------------------------------------------------------
// Label selectors.
// ---------------------------------------------------------------------------------------------

/// The operator of one label requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `key=value`
    Equals,
    /// `key==value` (the same as `=`)
    DoubleEquals,
    /// `key!=value` (also true when the key is absent)
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)` (also true when the key is absent)
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>n` (integers)
    GreaterThan,
    /// `key<n` (integers)
    LessThan,
}

impl Operator {
    /// The name `selection.Operator` uses, as in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

/// One term of a label selector: a key, an operator and its values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted and without duplicates.
    values: Vec<String>,
}

impl Requirement {
    /// Builds a requirement, validating it as `labels.NewRequirement` does.
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, SelectorError> {
        let mut errs = Vec::new();
        let key_errs = label_key_errors(key);
        if !key_errs.is_empty() {
            errs.push(invalid("key", key, &key_errs.join("; ")));
        }
        let values_json = || Value::from(values.clone()).to_string();
        match operator {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    errs.push(format!(
                        "values: Invalid value: {}: for 'in', 'notin' operators, values set can't be empty",
                        values_json()
                    ));
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {}: exact-match compatibility requires one single value",
                        values_json()
                    ));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    errs.push(format!(
                        "values: Invalid value: {}: values set must be empty for exists and does not exist",
                        values_json()
                    ));
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {}: for 'Gt', 'Lt' operators, exactly one value is required",
                        values_json()
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(invalid(
                            &format!("values[{i}]"),
                            v,
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let value_errs = label_value_errors(v);
            if !value_errs.is_empty() {
                errs.push(invalid(
                    &format!("values[{i}][{key}]"),
                    v,
                    &value_errs.join("; "),
                ));
            }
        }
        if let Some(message) = aggregate(errs) {
            return Err(SelectorError::new(message));
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted, without duplicates.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a label set, given as a lookup function, satisfies this requirement.
    pub fn matches_with<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                lookup(&self.key).is_some_and(has)
            }
            Operator::NotEquals | Operator::NotIn => !lookup(&self.key).is_some_and(has),
            Operator::Exists => lookup(&self.key).is_some(),
            Operator::DoesNotExist => lookup(&self.key).is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(Ok(have)) = lookup(&self.key).map(str::parse::<i64>) else {
                    return false;
                };
                let Some(Ok(want)) = self.values.first().map(|v| v.parse::<i64>()) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in (",
            Operator::NotIn => " notin (",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        f.write_str(op)?;
        f.write_str(&self.values.join(","))?;
        if matches!(self.operator, Operator::In | Operator::NotIn) {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A label selector: a conjunction of [`Requirement`]s. The empty selector matches everything;
/// [`LabelSelector::nothing`] (what a `null` `metav1.LabelSelector` means) matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LabelSelector {
    /// Sorted by key (stably), as kube-apiserver keeps them.
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// The selector that matches no object.
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Parses the `?labelSelector=` syntax (already URL-decoded).
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        let requirements = Parser::new(s).parse()?;
        Ok(LabelSelector::from_requirements(requirements))
    }

    /// A selector from requirements (sorted by key here).
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements,
            nothing: false,
        }
    }

    /// The selector matching exactly a label set, without validation (`labels.SelectorFromSet`),
    /// as for a Service's or ReplicationController's `spec.selector`. An empty set matches
    /// everything.
    pub fn from_map(labels: &BTreeMap<String, String>) -> Self {
        let requirements = labels
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                operator: Operator::Equals,
                values: vec![v.clone()],
            })
            .collect();
        LabelSelector::from_requirements(requirements)
    }

    /// Builds a selector from a `metav1.LabelSelector` in JSON (`matchLabels` and
    /// `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`), as
    /// `metav1.LabelSelectorAsSelector` does: `null` matches nothing, `{}` matches everything.
    pub fn from_label_selector_json(v: &Value) -> Result<LabelSelector, SelectorError> {
        let obj = match v {
            Value::Null => return Ok(LabelSelector::nothing()),
            Value::Object(obj) => obj,
            other => {
                return Err(SelectorError::new(format!(
                    "invalid label selector: expected an object, got {other}"
                )))
            }
        };
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (k, v) in labels {
                    let Some(v) = v.as_str() else {
                        return Err(SelectorError::new(format!(
                            "invalid label selector: matchLabels[{k}] must be a string"
                        )));
                    };
                    requirements.push(Requirement::new(k, Operator::Equals, vec![v.to_string()])?);
                }
            }
            Some(_) => {
                return Err(SelectorError::new(
                    "invalid label selector: matchLabels must be an object",
                ))
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for expr in exprs {
                    requirements.push(requirement_from_expression(expr)?);
                }
            }
            Some(_) => {
                return Err(SelectorError::new(
                    "invalid label selector: matchExpressions must be a list",
                ))
            }
        }
        Ok(LabelSelector::from_requirements(requirements))
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// True for the selector that matches every object (no requirement).
    pub fn is_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// True for the selector that matches no object.
    pub fn is_nothing(&self) -> bool {
        self.nothing
    }

    /// Whether a label set matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Whether a JSON label map (`metadata.labels`; `None` or `null` for no labels) matches.
    /// Non-string values are treated as absent.
    pub fn matches_json(&self, labels: Option<&Value>) -> bool {
        let map: Option<&Map<String, Value>> = labels.and_then(Value::as_object);
        self.matches_with(|k| map.and_then(|m| m.get(k)).and_then(Value::as_str))
    }

    /// Whether an object's `metadata.labels` matches.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches_json(obj.pointer("/metadata/labels"))
    }

    /// Whether a label set, given as a lookup function, matches.
    pub fn matches_with<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches_with(&lookup))
    }

    /// The value a label must have for this selector to match, when one `=`/`==`/single `in`
    /// requirement pins it (useful to use an index).
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        self.requirements.iter().find_map(|r| {
            (r.key == key
                && matches!(
                    r.operator,
                    Operator::Equals | Operator::DoubleEquals | Operator::In
                )
                && r.values.len() == 1)
                .then(|| r.values[0].as_str())
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

fn requirement_from_expression(expr: &Value) -> Result<Requirement, SelectorError> {
    let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
    let op = expr
        .get("operator")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let operator = match op {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(SelectorError::new(format!(
                "{} is not a valid label selector operator",
                go_quote(other)
            )))
        }
    };
    let values = match expr.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    SelectorError::new(format!(
                        "invalid label selector: values of {key} must be strings"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(SelectorError::new(format!(
                "invalid label selector: values of {key} must be a list"
            )))
        }
    };
    Requirement::new(key, operator, values)
}

// The lexer and parser follow the structure of k8s.io/apimachinery/pkg/labels (a recursive
// descent over a pre-scanned token list) so that they accept and reject the same strings with
// the same messages.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn symbol_token(s: &str) -> Option<Token> {
    Some(match s {
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        "!" => Token::DoesNotExist,
        "==" => Token::DoubleEquals,
        "=" => Token::Equals,
        ">" => Token::GreaterThan,
        "<" => Token::LessThan,
        "!=" => Token::NotEquals,
        "(" => Token::OpenPar,
        _ => return None,
    })
}

fn lex(s: &str) -> Vec<(Token, String)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && is_whitespace(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            out.push((Token::End, String::new()));
            return out;
        }
        if is_special(b[i]) {
            // Longest symbol first: "!=" and "==" before "!" and "=".
            let two = s
                .get(i..i + 2)
                .and_then(|t| symbol_token(t).map(|k| (k, t)));
            let (tok, lit) = match two {
                Some(t) => t,
                None => {
                    let t = &s[i..i + 1];
                    (symbol_token(t).expect("special symbols are tokens"), t)
                }
            };
            i += lit.len();
            out.push((tok, lit.to_string()));
        } else {
            let start = i;
            while i < b.len() && !is_special(b[i]) && !is_whitespace(b[i]) {
                i += 1;
            }
            let lit = &s[start..i];
            let tok = match lit {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Identifier,
            };
            out.push((tok, lit.to_string()));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser {
    items: Vec<(Token, String)>,
    pos: usize,
}

impl Parser {
    fn new(s: &str) -> Self {
        Parser {
            items: lex(s),
            pos: 0,
        }
    }

    fn token_at(&self, pos: usize, ctx: Context) -> (Token, String) {
        let (tok, lit) = self.items[pos.min(self.items.len() - 1)].clone();
        let tok = match tok {
            Token::In | Token::NotIn if ctx == Context::Values => Token::Identifier,
            t => t,
        };
        (tok, lit)
    }

    fn lookahead(&self, ctx: Context) -> (Token, String) {
        self.token_at(self.pos, ctx)
    }

    fn consume(&mut self, ctx: Context) -> (Token, String) {
        let t = self.token_at(self.pos, ctx);
        if self.pos < self.items.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Context::Values);
            match tok {
                Token::Identifier | Token::DoesNotExist => {
                    let r = self.parse_requirement().map_err(|e| {
                        SelectorError::new(format!("unable to parse requirement: {e}"))
                    })?;
                    reqs.push(r);
                    let (t, l) = self.consume(Context::Values);
                    match t {
                        Token::End => return Ok(reqs),
                        Token::Comma => {
                            let (t2, l2) = self.lookahead(Context::Values);
                            if t2 != Token::Identifier && t2 != Token::DoesNotExist {
                                return Err(SelectorError::new(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError::new(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )))
                        }
                    }
                }
                Token::End => return Ok(reqs),
                _ => {
                    return Err(SelectorError::new(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )))
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, inferred) = self.parse_key_and_infer_operator()?;
        if let Some(op) = inferred {
            return Requirement::new(&key, op, Vec::new()).map_err(|e| e.message);
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values).map_err(|e| e.message)
    }

    /// The key, and the operator when it is unary (`!key`, or `key` followed by `,` or end).
    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let (mut tok, mut lit) = self.consume(Context::Values);
        let negated = tok == Token::DoesNotExist;
        if negated {
            (tok, lit) = self.consume(Context::Values);
        }
        if tok != Token::Identifier {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        let errs = label_key_errors(&lit);
        if !errs.is_empty() {
            return Err(invalid("<nil>", &lit, &errs.join("; ")));
        }
        let (next, _) = self.lookahead(Context::Values);
        let op = if negated {
            Some(Operator::DoesNotExist)
        } else if next == Token::End || next == Token::Comma {
            Some(Operator::Exists)
        } else {
            None
        };
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (tok, lit) = self.consume(Context::KeyAndOperator);
        Ok(match tok {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            _ => return Err(format!("found '{lit}', expected: {BINARY_OPERATORS}")),
        })
    }

    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.consume(Context::Values);
        if tok != Token::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.lookahead(Context::Values);
        match tok {
            Token::Identifier | Token::Comma => {
                let values = self.parse_identifiers_list()?;
                let (tok, _) = self.consume(Context::Values);
                if tok != Token::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(values)
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(vec![String::new()])
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    /// A comma-separated list of possibly empty identifiers: `(a,,b)` holds "a", "" and "b".
    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut values: Vec<String> = Vec::new();
        loop {
            let (tok, lit) = self.consume(Context::Values);
            match tok {
                Token::Identifier => {
                    values.push(lit);
                    let (tok2, lit2) = self.lookahead(Context::Values);
                    match tok2 {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(values),
                        _ => return Err(format!("found '{lit2}', expected: ',' or ')'")),
                    }
                }
                Token::Comma => {
                    if values.is_empty() {
                        values.push(String::new()); // "(,"
                    }
                    let (tok2, _) = self.lookahead(Context::Values);
                    if tok2 == Token::ClosedPar {
                        values.push(String::new()); // ",)"
                        return Ok(values);
                    }
                    if tok2 == Token::Comma {
                        values.push(String::new()); // ",,"
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        let (tok, _) = self.lookahead(Context::Values);
        if tok == Token::End || tok == Token::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.consume(Context::Values);
        if tok == Token::Identifier {
            return Ok(vec![lit]);
        }
        Err(format!("found '{lit}', expected: identifier"))
    }
}

// ---------------------------------------------------------------------------------------------
// Field selectors.
// ---------------------------------------------------------------------------------------------

/// The operator of one field selector term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    /// `field=value` or `field==value`
    Equals,
    /// `field!=value`
    NotEquals,
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldRequirement {
    pub field: String,
    pub operator: FieldOperator,
    /// The unescaped value.
    pub value: String,
}

impl fmt::Display for FieldRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.operator {
            FieldOperator::Equals => "=",
            FieldOperator::NotEquals => "!=",
        };
        write!(f, "{}{op}{}", self.field, escape_field_value(&self.value))
    }
}

/// A field selector: a conjunction of [`FieldRequirement`]s. The empty one matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldSelector {
    /// Sorted by their text, as kube-apiserver keeps them.
    requirements: Vec<FieldRequirement>,
}

/// Escapes `\`, `,` and `=` in a field selector value (`fields.EscapeValue`).
pub fn escape_field_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unescape_field_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(SelectorError::new(format!(
                        "invalid field selector: invalid escape sequence: \\{c}"
                    )))
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => {
                return Err(SelectorError::new(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                )))
            }
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::new(
            "invalid field selector: invalid escape sequence: \\",
        ));
    }
    Ok(out)
}

/// Splits on the commas that are not escaped.
fn split_field_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// The field, operator and raw value of one term: the first `!=`, `==` or `=` splits it.
fn split_field_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, kind) in [
            ("!=", FieldOperator::NotEquals),
            ("==", FieldOperator::Equals),
            ("=", FieldOperator::Equals),
        ] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], kind, value));
            }
        }
    }
    None
}

impl FieldSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        FieldSelector::default()
    }

    /// Parses the `?fieldSelector=` syntax (already URL-decoded). Blanks around a field name
    /// are ignored; values are taken as written (after unescaping).
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        let mut terms = split_field_terms(s);
        terms.sort_unstable();
        let mut requirements = Vec::new();
        for term in terms {
            if term.is_empty() {
                continue;
            }
            let Some((field, operator, raw)) = split_field_term(term) else {
                return Err(SelectorError::new(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            requirements.push(FieldRequirement {
                field: field.trim().to_string(),
                operator,
                value: unescape_field_value(raw)?,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// A selector with one `field=value` term.
    pub fn one_term_equal(field: &str, value: &str) -> Self {
        FieldSelector {
            requirements: vec![FieldRequirement {
                field: field.to_string(),
                operator: FieldOperator::Equals,
                value: value.to_string(),
            }],
        }
    }

    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// True when the selector has no term (it matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The fields named by the selector, in order, repeated if a field has several terms.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().map(|r| r.field.as_str())
    }

    /// The value a field must have for this selector to match, when a `=` term pins it.
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }

    /// Whether an object matches, its fields read with [`field_value`].
    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_with(|f| field_value(obj, f))
    }

    /// Whether an object matches, its fields read with the given function (for kinds whose
    /// field labels are not plain paths).
    pub fn matches_with(&self, value_of: impl Fn(&str) -> String) -> bool {
        self.requirements.iter().all(|r| {
            let have = value_of(&r.field);
            match r.operator {
                FieldOperator::Equals => have == r.value,
                FieldOperator::NotEquals => have != r.value,
            }
        })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for FieldSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldSelector::parse(s)
    }
}

/// The string value of a field label on an object, as kube-apiserver's per-kind field sets
/// give it: the JSON path is walked (`spec.nodeName` → `obj["spec"]["nodeName"]`); a missing
/// field is `""`; booleans and numbers print as Go prints them. Field labels that are not
/// plain paths are mapped first: an Event's `source` is `source.component`; the boolean and
/// counter fields that kube-apiserver reads from non-pointer Go fields (`spec.unschedulable`,
/// `spec.hostNetwork`, `status.successful`, `status.replicas`) default to `false` / `0`.
pub fn field_value(obj: &Value, field: &str) -> String {
    let (path, default) = match field {
        "source" => ("source.component", ""),
        "spec.unschedulable" | "spec.hostNetwork" => (field, "false"),
        "status.successful" | "status.replicas" => (field, "0"),
        _ => (field, ""),
    };
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return default.to_string(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => default.to_string(),
        // Not a field label kube-apiserver would serve; render it so a selector can still
        // compare (and fail to match) deterministically.
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> String {
        LabelSelector::parse(s)
            .map(|s| panic!("expected an error, parsed {s:?}"))
            .unwrap_err()
            .message
    }

    #[test]
    fn equality_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(sel("app=web").matches(&l));
        assert!(sel("app==web").matches(&l));
        assert!(!sel("app=db").matches(&l));
        assert!(sel("app!=db").matches(&l));
        assert!(!sel("app!=web").matches(&l));
        assert!(
            sel("missing!=x").matches(&l),
            "!= holds when the key is absent"
        );
        assert!(!sel("missing=x").matches(&l));
    }

    #[test]
    fn set_operators() {
        let l = labels(&[("env", "prod")]);
        assert!(sel("env in (prod,staging)").matches(&l));
        assert!(!sel("env in (dev)").matches(&l));
        assert!(sel("env notin (dev,qa)").matches(&l));
        assert!(!sel("env notin (prod)").matches(&l));
        assert!(sel("other notin (prod)").matches(&l));
        assert!(!sel("other in (prod)").matches(&l));
    }

    #[test]
    fn existence_operators() {
        let l = labels(&[("a", "1")]);
        assert!(sel("a").matches(&l));
        assert!(!sel("b").matches(&l));
        assert!(sel("!b").matches(&l));
        assert!(!sel("!a").matches(&l));
    }

    #[test]
    fn integer_comparisons() {
        let l = labels(&[("n", "5"), ("s", "x")]);
        assert!(sel("n>4").matches(&l));
        assert!(!sel("n>5").matches(&l));
        assert!(sel("n<6").matches(&l));
        assert!(!sel("s<6").matches(&l));
        assert!(err("n>x").contains("the value must be an integer"));
    }

    #[test]
    fn conjunction_and_whitespace() {
        let s = sel("  app = web ,  env  in ( prod , staging ) , !legacy,tier ");
        assert_eq!(s.requirements().len(), 4);
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("tier", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("tier", "x"),
            ("legacy", "")
        ])));
        // Sorted by key, values sorted.
        assert_eq!(s.to_string(), "app=web,env in (prod,staging),!legacy,tier");
    }

    #[test]
    fn empty_and_odd_values() {
        assert!(sel("").is_everything());
        assert!(sel("").matches(&labels(&[])));
        assert!(sel("a=").matches(&labels(&[("a", "")])));
        assert!(sel("a=,b").matches(&labels(&[("a", ""), ("b", "x")])));
        assert_eq!(sel("a in ()").requirements()[0].values(), [""]);
        assert_eq!(
            sel("a in (x,,y)").requirements()[0].values(),
            ["", "x", "y"]
        );
        assert_eq!(sel("a in (,x)").requirements()[0].values(), ["", "x"]);
        // "in" and "notin" are values where a value is expected.
        assert!(sel("a in (in,notin)").matches(&labels(&[("a", "in")])));
        assert!(sel("a=in").matches(&labels(&[("a", "in")])));
        // Qualified keys.
        assert!(sel("app.kubernetes.io/name=web")
            .matches(&labels(&[("app.kubernetes.io/name", "web")])));
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(
            err("=b"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("a in b"),
            "unable to parse requirement: found 'b' expected: '('"
        );
        assert_eq!(
            err("a in (b"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            err("a ( b"),
            "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(err("!a=b"), "found '=', expected: ',' or 'end of string'");
    }

    #[test]
    fn validation_errors_read_like_kube_apiserver() {
        assert_eq!(
            err("a@b=c"),
            "unable to parse requirement: <nil>: Invalid value: \"a@b\": name part must consist of \
             alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric \
             character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is \
             '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        assert_eq!(
            err("app=-web"),
            "unable to parse requirement: values[0][app]: Invalid value: \"-web\": a valid label \
             must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and \
             must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  \
             or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );
        let long = "x".repeat(64);
        assert!(err(&format!("{long}=a")).contains("name part must be no more than 63 bytes"));
        assert!(err(&format!("a={long}")).contains("must be no more than 63 bytes"));
        assert!(err("Example.com/a=b").contains("prefix part a lowercase RFC 1123 subdomain"));
        assert!(err("/a=b").contains("prefix part must be non-empty"));
        assert!(err("a/b/c").contains("a valid label key must consist of"));
        // A 63-character name part and a DNS prefix are fine.
        sel(&format!("example.com/{}=v", "y".repeat(63)));
    }

    #[test]
    fn label_selector_from_json() {
        let s = LabelSelector::from_label_selector_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "tier", "operator": "Exists"},
                {"key": "zone", "operator": "NotIn", "values": ["b"]}
            ]
        }))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("tier", "t")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("tier", "t"),
            ("zone", "b")
        ])));
        assert_eq!(
            s.to_string(),
            "app=web,env in (prod,staging),!legacy,tier,zone notin (b)"
        );

        let everything = LabelSelector::from_label_selector_json(&json!({})).unwrap();
        assert!(everything.is_everything());
        assert!(everything.matches(&labels(&[("x", "y")])));
        let nothing = LabelSelector::from_label_selector_json(&Value::Null).unwrap();
        assert!(nothing.is_nothing());
        assert!(!nothing.matches(&labels(&[])));

        let bad_op = LabelSelector::from_label_selector_json(&json!({
            "matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]
        }))
        .unwrap_err();
        assert_eq!(
            bad_op.message(),
            "\"Equals\" is not a valid label selector operator"
        );
        let empty_in = LabelSelector::from_label_selector_json(&json!({
            "matchExpressions": [{"key": "a", "operator": "In", "values": []}]
        }))
        .unwrap_err();
        assert_eq!(
            empty_in.message(),
            "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
        );
        let exists_with_values = LabelSelector::from_label_selector_json(&json!({
            "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
        }))
        .unwrap_err();
        assert!(exists_with_values
            .message()
            .contains("values set must be empty for exists and does not exist"));
        let bad_value = LabelSelector::from_label_selector_json(&json!({
            "matchLabels": {"app": "not valid"}
        }))
        .unwrap_err();
        assert!(bad_value
            .message()
            .starts_with("values[0][app]: Invalid value: \"not valid\""));
    }

    #[test]
    fn matches_object_labels() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "web"}}});
        assert!(sel("app=web").matches_object(&pod));
        assert!(sel("!tier").matches_object(&pod));
        let bare = json!({"metadata": {"name": "p"}});
        assert!(sel("").matches_object(&bare));
        assert!(sel("app!=web").matches_object(&bare));
        assert!(!sel("app").matches_object(&bare));
        assert_eq!(sel("app=web,x").requires_exact_match("app"), Some("web"));
        assert_eq!(sel("app in (a,b)").requires_exact_match("app"), None);
        let svc = LabelSelector::from_map(&labels(&[("app", "web")]));
        assert!(svc.matches_object(&pod));
        assert!(LabelSelector::from_map(&BTreeMap::new()).is_everything());
    }

    #[test]
    fn field_selector_parse_and_match() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"nodeName": "node1"},
            "status": {"phase": "Running"}
        });
        let s = FieldSelector::parse(
            "spec.nodeName=node1,status.phase!=Succeeded,status.phase!=Failed",
        )
        .unwrap();
        assert!(s.matches(&pod));
        assert_eq!(
            s.fields().collect::<Vec<_>>(),
            ["spec.nodeName", "status.phase", "status.phase"]
        );
        assert!(FieldSelector::parse("metadata.name==web-1")
            .unwrap()
            .matches(&pod));
        assert!(!FieldSelector::parse("metadata.name=web-2")
            .unwrap()
            .matches(&pod));
        assert!(FieldSelector::parse("").unwrap().is_empty());
        assert!(FieldSelector::parse("").unwrap().matches(&pod));
        // A missing field is the empty string.
        let pending = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending"}});
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&pending));
        assert!(!FieldSelector::parse("spec.nodeName!=")
            .unwrap()
            .matches(&pending));
        assert_eq!(
            FieldSelector::parse("spec.nodeName=node1")
                .unwrap()
                .requires_exact_match("spec.nodeName"),
            Some("node1")
        );
    }

    #[test]
    fn field_selector_events_as_kubectl_describe_sends() {
        let event = json!({
            "involvedObject": {"kind": "Node", "name": "node1", "uid": "1a76", "namespace": ""},
            "reason": "Starting",
            "type": "Normal",
            "source": {"component": "kubelet", "host": "node1"}
        });
        let s = FieldSelector::parse(
            "involvedObject.name=node1,involvedObject.namespace=,involvedObject.kind=Node,involvedObject.uid=1a76",
        )
        .unwrap();
        assert!(s.matches(&event));
        assert!(
            FieldSelector::parse("type=Normal,reason=Starting,source=kubelet")
                .unwrap()
                .matches(&event)
        );
        assert!(!FieldSelector::parse("involvedObject.uid=other")
            .unwrap()
            .matches(&event));
    }

    #[test]
    fn field_selector_typed_defaults_and_escapes() {
        let node = json!({"metadata": {"name": "n"}, "spec": {}});
        assert!(FieldSelector::parse("spec.unschedulable=false")
            .unwrap()
            .matches(&node));
        let cordoned = json!({"spec": {"unschedulable": true}});
        assert!(FieldSelector::parse("spec.unschedulable=true")
            .unwrap()
            .matches(&cordoned));
        let job = json!({"status": {"succeeded": 1}});
        assert!(FieldSelector::parse("status.successful=0")
            .unwrap()
            .matches(&job));

        let s = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").unwrap();
        assert_eq!(s.requirements()[0].value, r"a,b=c\d");
        assert!(s.matches(&json!({"metadata": {"name": r"a,b=c\d"}})));
        assert_eq!(s.to_string(), r"metadata.name=a\,b\=c\\d");
        assert_eq!(
            FieldSelector::parse(r"a=b\x").unwrap_err().message(),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").unwrap_err().message(),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            FieldSelector::parse("metadata.name").unwrap_err().message(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        let spaced = FieldSelector::parse(" metadata.name =x").unwrap();
        assert_eq!(spaced.fields().collect::<Vec<_>>(), ["metadata.name"]);
    }
}
