//! Query filters (`{a: 1, b: {$gt: 2}, $or: [...]}`), compiled once and then
//! matched against documents: used by find/update/delete, by the oplog
//! filter of tailing cursors and by change-stream `$match` stages.

use std::cmp::Ordering;

use bson::{Bson, Document};
use regex::Regex;

use super::CommandError;
use super::path;
use super::value::{as_i64, compare, type_class, values_equal};

/// A compiled query filter.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    /// Every clause must match (a filter document is an implicit `$and`).
    And(Vec<Filter>),
    /// At least one clause must match.
    Or(Vec<Filter>),
    /// No clause may match.
    Nor(Vec<Filter>),
    /// Conditions on one dotted field path.
    Field {
        path: String,
        conditions: Vec<Condition>,
    },
}

/// One operator applied to the values found at a path.
#[derive(Debug, Clone)]
pub(crate) enum Condition {
    Eq(Bson),
    Ne(Bson),
    Cmp(Ordering, bool, Bson),
    In(Vec<Bson>),
    Nin(Vec<Bson>),
    Exists(bool),
    Regex(Regex),
    Not(Vec<Condition>),
    Size(usize),
    All(Vec<Bson>),
    ElemMatch(Box<ElemMatch>),
}

/// `$elemMatch` either filters sub-documents or applies operators to
/// scalar elements.
#[derive(Debug, Clone)]
pub(crate) enum ElemMatch {
    Document(Filter),
    Value(Vec<Condition>),
}

fn bad_value(message: String) -> CommandError {
    CommandError::new(2, "BadValue", message)
}

impl Filter {
    /// Compiles a filter document; unknown operators are rejected so that a
    /// typo never silently matches everything.
    pub(crate) fn parse(filter: &Document) -> Result<Self, CommandError> {
        let mut clauses = Vec::with_capacity(filter.len());
        for (key, value) in filter {
            match key.as_str() {
                "$and" | "$or" | "$nor" => {
                    let list = parse_clause_list(key, value)?;
                    clauses.push(match key.as_str() {
                        "$and" => Filter::And(list),
                        "$or" => Filter::Or(list),
                        _ => Filter::Nor(list),
                    });
                }
                "$comment" => {}
                other if other.starts_with('$') => {
                    return Err(bad_value(format!("unknown top level operator: {other}")));
                }
                field => clauses.push(Filter::Field {
                    path: field.to_string(),
                    conditions: parse_conditions(value)?,
                }),
            }
        }
        Ok(Filter::And(clauses))
    }

    /// Whether `doc` satisfies the filter.
    pub(crate) fn matches(&self, doc: &Document) -> bool {
        match self {
            Filter::And(list) => list.iter().all(|f| f.matches(doc)),
            Filter::Or(list) => list.iter().any(|f| f.matches(doc)),
            Filter::Nor(list) => !list.iter().any(|f| f.matches(doc)),
            Filter::Field { path, conditions } => {
                let parts = path::split(path);
                let root = DocRef(doc);
                let mut found = Vec::new();
                root.values(&parts, &mut found);
                conditions.iter().all(|c| c.matches(&found))
            }
        }
    }
}

/// Lets a borrowed document act as the root of a path walk without cloning.
struct DocRef<'a>(&'a Document);

impl<'a> DocRef<'a> {
    fn values(&self, parts: &[&str], out: &mut Vec<Option<&'a Bson>>) {
        let Some((first, rest)) = parts.split_first() else {
            return;
        };
        match self.0.get(*first) {
            Some(value) => path::query_values(value, rest, out),
            None => out.push(None),
        }
    }
}

fn parse_clause_list(op: &str, value: &Bson) -> Result<Vec<Filter>, CommandError> {
    let Bson::Array(items) = value else {
        return Err(bad_value(format!("{op} must be an array")));
    };
    if items.is_empty() {
        return Err(bad_value(format!(
            "{op} argument must be a non-empty array"
        )));
    }
    items
        .iter()
        .map(|item| match item {
            Bson::Document(doc) => Filter::parse(doc),
            _ => Err(bad_value(format!(
                "{op} argument's entries must be objects"
            ))),
        })
        .collect()
}

fn is_operator_document(value: &Bson) -> bool {
    matches!(value, Bson::Document(doc) if doc.keys().next().is_some_and(|k| k.starts_with('$')))
}

fn parse_conditions(value: &Bson) -> Result<Vec<Condition>, CommandError> {
    match value {
        Bson::Document(ops) if is_operator_document(value) => parse_operators(ops),
        Bson::RegularExpression(re) => Ok(vec![Condition::Regex(compile_regex(
            re.pattern.as_str(),
            re.options.as_str(),
        )?)]),
        other => Ok(vec![Condition::Eq(other.clone())]),
    }
}

fn parse_operators(ops: &Document) -> Result<Vec<Condition>, CommandError> {
    let mut conditions = Vec::with_capacity(ops.len());
    for (op, arg) in ops {
        let condition = match op.as_str() {
            "$eq" => Condition::Eq(arg.clone()),
            "$ne" => Condition::Ne(arg.clone()),
            "$gt" => Condition::Cmp(Ordering::Greater, false, arg.clone()),
            "$gte" => Condition::Cmp(Ordering::Greater, true, arg.clone()),
            "$lt" => Condition::Cmp(Ordering::Less, false, arg.clone()),
            "$lte" => Condition::Cmp(Ordering::Less, true, arg.clone()),
            "$in" => Condition::In(array_arg(op, arg)?),
            "$nin" => Condition::Nin(array_arg(op, arg)?),
            "$all" => Condition::All(array_arg(op, arg)?),
            "$exists" => Condition::Exists(super::value::is_truthy(Some(arg))),
            "$size" => Condition::Size(
                as_i64(arg)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad_value("$size needs a non-negative integer".into()))?,
            ),
            "$regex" => Condition::Regex(parse_regex_operator(arg, ops.get("$options"))?),
            "$options" => continue,
            "$not" => match arg {
                Bson::Document(inner) if is_operator_document(arg) => {
                    Condition::Not(parse_operators(inner)?)
                }
                Bson::RegularExpression(re) => Condition::Not(vec![Condition::Regex(
                    compile_regex(re.pattern.as_str(), re.options.as_str())?,
                )]),
                _ => return Err(bad_value("$not needs a regex or a document".into())),
            },
            "$elemMatch" => {
                let Bson::Document(inner) = arg else {
                    return Err(bad_value("$elemMatch needs an Object".into()));
                };
                let spec = if is_operator_document(arg)
                    && !inner
                        .keys()
                        .any(|k| matches!(k.as_str(), "$and" | "$or" | "$nor"))
                {
                    ElemMatch::Value(parse_operators(inner)?)
                } else {
                    ElemMatch::Document(Filter::parse(inner)?)
                };
                Condition::ElemMatch(Box::new(spec))
            }
            other => return Err(bad_value(format!("unknown operator: {other}"))),
        };
        conditions.push(condition);
    }
    Ok(conditions)
}

fn array_arg(op: &str, arg: &Bson) -> Result<Vec<Bson>, CommandError> {
    match arg {
        Bson::Array(items) => Ok(items.clone()),
        _ => Err(bad_value(format!("{op} needs an array"))),
    }
}

fn parse_regex_operator(arg: &Bson, options: Option<&Bson>) -> Result<Regex, CommandError> {
    let extra = match options {
        Some(Bson::String(s)) => s.as_str(),
        _ => "",
    };
    match arg {
        Bson::String(pattern) => compile_regex(pattern, extra),
        Bson::RegularExpression(re) => {
            let merged = format!("{}{extra}", re.options.as_str());
            compile_regex(re.pattern.as_str(), &merged)
        }
        _ => Err(bad_value("$regex has to be a string".into())),
    }
}

/// Compiles a MongoDB (PCRE-style) regex with its option letters.
pub(crate) fn compile_regex(pattern: &str, options: &str) -> Result<Regex, CommandError> {
    let mut builder = regex::RegexBuilder::new(pattern);
    for flag in options.chars() {
        match flag {
            'i' => builder.case_insensitive(true),
            'm' => builder.multi_line(true),
            's' => builder.dot_matches_new_line(true),
            'x' => builder.ignore_whitespace(true),
            'u' | 'l' => &mut builder,
            other => return Err(bad_value(format!("invalid flag in regex options: {other}"))),
        };
    }
    builder
        .build()
        .map_err(|e| bad_value(format!("Regular expression is invalid: {e}")))
}

/// The values a condition tests: each found value, and the elements of
/// found arrays (so `{tags: "x"}` matches `{tags: ["x", "y"]}`).
fn for_each_candidate(found: &[Option<&Bson>], mut test: impl FnMut(&Bson) -> bool) -> bool {
    for value in found.iter().flatten() {
        if test(value) {
            return true;
        }
        if let Bson::Array(items) = value
            && items.iter().any(&mut test)
        {
            return true;
        }
    }
    false
}

fn equals_any(found: &[Option<&Bson>], wanted: &Bson) -> bool {
    match wanted {
        Bson::Null => {
            found.is_empty()
                || found
                    .iter()
                    .any(|v| v.is_none_or(|v| matches!(v, Bson::Null | Bson::Undefined)))
        }
        Bson::RegularExpression(re) => {
            match compile_regex(re.pattern.as_str(), re.options.as_str()) {
                Ok(regex) => for_each_candidate(found, |v| regex_matches(&regex, v)),
                Err(_) => false,
            }
        }
        _ => for_each_candidate(found, |v| values_equal(v, wanted)),
    }
}

fn regex_matches(regex: &Regex, value: &Bson) -> bool {
    match value {
        Bson::String(s) | Bson::Symbol(s) => regex.is_match(s),
        _ => false,
    }
}

impl Condition {
    fn matches(&self, found: &[Option<&Bson>]) -> bool {
        match self {
            Condition::Eq(wanted) => equals_any(found, wanted),
            Condition::Ne(wanted) => !equals_any(found, wanted),
            Condition::Cmp(side, inclusive, bound) => for_each_candidate(found, |v| {
                type_class(v) == type_class(bound) && {
                    let order = compare(v, bound);
                    order == *side || (*inclusive && order == Ordering::Equal)
                }
            }),
            Condition::In(list) => list.iter().any(|wanted| equals_any(found, wanted)),
            Condition::Nin(list) => !list.iter().any(|wanted| equals_any(found, wanted)),
            Condition::All(list) => list.iter().all(|wanted| equals_any(found, wanted)),
            Condition::Exists(wanted) => found.iter().any(Option::is_some) == *wanted,
            Condition::Regex(regex) => for_each_candidate(found, |v| regex_matches(regex, v)),
            Condition::Not(inner) => !inner.iter().all(|c| c.matches(found)),
            Condition::Size(size) => found
                .iter()
                .flatten()
                .any(|v| matches!(v, Bson::Array(items) if items.len() == *size)),
            Condition::ElemMatch(spec) => found.iter().flatten().any(|v| match v {
                Bson::Array(items) => items.iter().any(|item| spec.matches(item)),
                _ => false,
            }),
        }
    }
}

impl ElemMatch {
    fn matches(&self, item: &Bson) -> bool {
        match (self, item) {
            (ElemMatch::Document(filter), Bson::Document(doc)) => filter.matches(doc),
            (ElemMatch::Document(_), _) => false,
            (ElemMatch::Value(conditions), value) => {
                let found = [Some(value)];
                conditions.iter().all(|c| match c {
                    // An element is tested as itself, not as an array to expand.
                    Condition::Eq(w) => values_equal(value, w),
                    other => other.matches(&found),
                })
            }
        }
    }
}

/// Tests a single value (an array element for `$pull`) against a condition
/// given either as operators or as a plain value.
pub(crate) fn value_matches(value: &Bson, condition: &Bson) -> Result<bool, CommandError> {
    match condition {
        Bson::Document(doc) if is_operator_document(condition) => {
            let conditions = parse_operators(doc)?;
            Ok(ElemMatch::Value(conditions).matches(value))
        }
        Bson::Document(doc) => match value {
            Bson::Document(element) => Ok(Filter::parse(doc)?.matches(element)),
            _ => Ok(false),
        },
        Bson::RegularExpression(re) => Ok(regex_matches(
            &compile_regex(re.pattern.as_str(), re.options.as_str())?,
            value,
        )),
        other => Ok(values_equal(value, other)),
    }
}

#[cfg(test)]
mod tests {
    use bson::{Timestamp, doc};

    use super::*;

    fn check(filter: Document, doc: Document) -> bool {
        Filter::parse(&filter).unwrap().matches(&doc)
    }

    #[test]
    fn table_of_filters() {
        let person = doc! {"_id": 1, "name": "ann", "age": 30, "tags": ["a", "b"],
        "addr": {"city": "Oslo", "zip": 150}, "items": [{"k": 1}, {"k": 2}]};
        let cases: Vec<(Document, bool)> = vec![
            (doc! {"name": "ann"}, true),
            (doc! {"name": "bob"}, false),
            (doc! {"age": {"$gt": 29}}, true),
            (doc! {"age": {"$gte": 30, "$lt": 31}}, true),
            (doc! {"age": {"$lte": 29}}, false),
            (doc! {"age": {"$gt": "a"}}, false),
            (doc! {"age": {"$ne": 30}}, false),
            (doc! {"age": {"$in": [1, 30.0]}}, true),
            (doc! {"age": {"$nin": [30]}}, false),
            (doc! {"tags": "b"}, true),
            (doc! {"tags": {"$in": ["z", "a"]}}, true),
            (doc! {"addr.city": "Oslo"}, true),
            (doc! {"items.k": 2}, true),
            (doc! {"items.1.k": 2}, true),
            (doc! {"items.0.k": 2}, false),
            (doc! {"missing": {"$exists": false}}, true),
            (doc! {"addr.zip": {"$exists": true}}, true),
            (doc! {"missing": null}, true),
            (doc! {"$or": [{"name": "x"}, {"age": 30}]}, true),
            (doc! {"$and": [{"name": "ann"}, {"age": 31}]}, false),
            (doc! {"$nor": [{"name": "x"}]}, true),
            (doc! {"name": {"$regex": "^A", "$options": "i"}}, true),
            (doc! {"items": {"$elemMatch": {"k": {"$gt": 1}}}}, true),
            (doc! {"tags": {"$size": 2}}, true),
        ];
        for (filter, want) in cases {
            assert_eq!(check(filter.clone(), person.clone()), want, "{filter}");
        }
    }

    #[test]
    fn timestamps_compare() {
        let entry = doc! {"ts": Timestamp { time: 10, increment: 2 }, "ns": "a.b"};
        assert!(check(
            doc! {"ts": {"$gt": Timestamp { time: 10, increment: 1 }}},
            entry.clone()
        ));
        assert!(!check(
            doc! {"ts": {"$gt": Timestamp { time: 10, increment: 2 }}},
            entry.clone()
        ));
        assert!(check(
            doc! {"ts": {"$gte": Timestamp { time: 10, increment: 2 }}},
            entry
        ));
    }

    #[test]
    fn unknown_operators_are_bad_values() {
        for filter in [doc! {"a": {"$where": 1}}, doc! {"$text": {"$search": "x"}}] {
            let err = Filter::parse(&filter).unwrap_err();
            assert_eq!(err.code, 2, "{filter}");
        }
    }

    #[test]
    fn pull_conditions() {
        assert!(value_matches(&Bson::Int32(5), &Bson::Document(doc! {"$gte": 5})).unwrap());
        assert!(!value_matches(&Bson::Int32(4), &Bson::Document(doc! {"$gte": 5})).unwrap());
        assert!(
            value_matches(
                &Bson::Document(doc! {"a": 1, "b": 2}),
                &Bson::Document(doc! {"a": 1})
            )
            .unwrap()
        );
    }
}
