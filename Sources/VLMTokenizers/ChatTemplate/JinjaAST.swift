// The syntax tree the parser builds and the interpreter walks. Mirrors jinja2.nodes for the supported subset.

/// An expression with the template line it starts on (for error messages).
struct JinjaExpr: Sendable {
    indirect enum Kind: Sendable {
        case literal(JinjaValue)
        case name(String)
        case list([JinjaExpr])
        case tuple([JinjaExpr])
        case dict([(key: JinjaExpr, value: JinjaExpr)])
        /// `base.name`
        case attribute(JinjaExpr, String)
        /// `base[index]`; `index` may be a `.slice`.
        case item(JinjaExpr, JinjaExpr)
        /// `start:stop:step` inside brackets.
        case slice(JinjaExpr?, JinjaExpr?, JinjaExpr?)
        case call(JinjaExpr, JinjaArguments)
        /// `base | name(args)`; `base` is nil in the filter chain of `{% filter %}` and `{% set x | f %}`.
        case filter(JinjaExpr?, String, JinjaArguments)
        /// `base is [not] name(args)` (negation is a `.not` around it).
        case test(JinjaExpr, String, JinjaArguments)
        case negative(JinjaExpr)
        case positive(JinjaExpr)
        case not(JinjaExpr)
        case binary(JinjaBinaryOperator, JinjaExpr, JinjaExpr)
        case and(JinjaExpr, JinjaExpr)
        case or(JinjaExpr, JinjaExpr)
        /// `a ~ b ~ c`
        case concat([JinjaExpr])
        /// `a < b <= c`, `a in b`, `a not in b`: a Python comparison chain.
        case compare(JinjaExpr, [(op: JinjaCompareOperator, operand: JinjaExpr)])
        /// `then if test else otherwise`; without `else` a false test gives Undefined.
        case conditional(test: JinjaExpr, then: JinjaExpr, otherwise: JinjaExpr?)
    }

    let kind: Kind
    let line: Int
    /// Height of the tree below and including this node; the parser bounds it so evaluation cannot overflow
    /// the stack.
    let depth: Int

    init(kind: Kind, line: Int) {
        self.kind = kind
        self.line = line
        self.depth = 1 + (JinjaExpr.children(of: kind).map(\.depth).max() ?? 0)
    }

    /// The same node with each child expression replaced by `transform(child)`.
    func mapChildren(_ transform: (JinjaExpr) -> JinjaExpr) -> JinjaExpr {
        func args(_ a: JinjaArguments) -> JinjaArguments {
            JinjaArguments(
                positional: a.positional.map(transform), keyword: a.keyword.map { ($0.name, transform($0.value)) },
                star: a.star.map(transform), starStar: a.starStar.map(transform))
        }
        let mapped: Kind
        switch kind {
        case .literal, .name: return self
        case .list(let items): mapped = .list(items.map(transform))
        case .tuple(let items): mapped = .tuple(items.map(transform))
        case .concat(let items): mapped = .concat(items.map(transform))
        case .dict(let pairs): mapped = .dict(pairs.map { (transform($0.key), transform($0.value)) })
        case .attribute(let base, let name): mapped = .attribute(transform(base), name)
        case .negative(let base): mapped = .negative(transform(base))
        case .positive(let base): mapped = .positive(transform(base))
        case .not(let base): mapped = .not(transform(base))
        case .item(let base, let index): mapped = .item(transform(base), transform(index))
        case .slice(let start, let stop, let step): mapped = .slice(start.map(transform), stop.map(transform), step.map(transform))
        case .call(let callee, let arguments): mapped = .call(transform(callee), args(arguments))
        case .filter(let base, let name, let arguments): mapped = .filter(base.map(transform), name, args(arguments))
        case .test(let base, let name, let arguments): mapped = .test(transform(base), name, args(arguments))
        case .binary(let op, let left, let right): mapped = .binary(op, transform(left), transform(right))
        case .and(let left, let right): mapped = .and(transform(left), transform(right))
        case .or(let left, let right): mapped = .or(transform(left), transform(right))
        case .compare(let first, let operations):
            mapped = .compare(transform(first), operations.map { ($0.op, transform($0.operand)) })
        case .conditional(let test, let then, let otherwise):
            mapped = .conditional(test: transform(test), then: transform(then), otherwise: otherwise.map(transform))
        }
        return JinjaExpr(kind: mapped, line: line)
    }

    static func children(of kind: Kind) -> [JinjaExpr] {
        switch kind {
        case .literal, .name: return []
        case .list(let items), .tuple(let items), .concat(let items): return items
        case .dict(let pairs): return pairs.flatMap { [$0.key, $0.value] }
        case .attribute(let base, _), .negative(let base), .positive(let base), .not(let base): return [base]
        case .item(let base, let index): return [base, index]
        case .slice(let start, let stop, let step): return [start, stop, step].compactMap { $0 }
        case .call(let callee, let arguments): return [callee] + arguments.all
        case .filter(let base, _, let arguments): return (base.map { [$0] } ?? []) + arguments.all
        case .test(let base, _, let arguments): return [base] + arguments.all
        case .binary(_, let left, let right), .and(let left, let right), .or(let left, let right): return [left, right]
        case .compare(let first, let operations): return [first] + operations.map(\.operand)
        case .conditional(let test, let then, let otherwise): return [test, then] + (otherwise.map { [$0] } ?? [])
        }
    }
}

enum JinjaBinaryOperator: String, Sendable {
    case add = "+", subtract = "-", multiply = "*", divide = "/", floorDivide = "//", modulo = "%", power = "**"
}

enum JinjaCompareOperator: String, Sendable {
    case eq = "==", ne = "!=", lt = "<", le = "<=", gt = ">", ge = ">=", `in` = "in", notIn = "not in"
}

struct JinjaArguments: Sendable {
    var positional: [JinjaExpr] = []
    var keyword: [(name: String, value: JinjaExpr)] = []
    /// `*args`
    var star: JinjaExpr?
    /// `**kwargs`
    var starStar: JinjaExpr?

    var all: [JinjaExpr] { positional + keyword.map(\.value) + [star, starStar].compactMap { $0 } }
}

/// What `{% set %}`, `{% for %}` and `{% with %}` assign to.
indirect enum JinjaTarget: Sendable {
    case name(String)
    case tuple([JinjaTarget])
    /// `ns.attr`, only in `{% set %}`.
    case namespaceAttribute(String, String)
}

/// A statement, or template text.
indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpr)
    case ifChain(branches: [(condition: JinjaExpr, body: [JinjaNode])], otherwise: [JinjaNode])
    case forLoop(JinjaForLoop)
    case assign(JinjaTarget, JinjaExpr, line: Int)
    /// `{% set x %}...{% endset %}`, with an optional filter chain applied to the body.
    case assignBlock(JinjaTarget, filter: JinjaExpr?, body: [JinjaNode], line: Int)
    case macro(JinjaMacroDefinition)
    /// `{% call(params) macro(args) %}body{% endcall %}`: the body becomes `caller`.
    case callBlock(call: JinjaExpr, caller: JinjaMacroDefinition)
    case filterBlock(filter: JinjaExpr, body: [JinjaNode], line: Int)
    case with(assignments: [(target: JinjaTarget, value: JinjaExpr)], body: [JinjaNode])
    case loopBreak
    case loopContinue
    /// A body rendered in its own scope: transformers' `{% generation %}` block.
    case scope([JinjaNode])
    /// Names this scope assigns before any read, which Jinja's compiler starts as "missing" (Undefined) rather
    /// than looking them up outside: first statement of a scope's body (see JinjaScopeAnalysis).
    case declareMissing([String])
}

struct JinjaForLoop: Sendable {
    let target: JinjaTarget
    let iterable: JinjaExpr
    /// `{% for x in xs if condition %}`
    let condition: JinjaExpr?
    let body: [JinjaNode]
    let otherwise: [JinjaNode]
    let line: Int
}

/// A `{% macro %}` (or the body of a `{% call %}` block) as written.
final class JinjaMacroDefinition: Sendable {
    let name: String
    let parameters: [String]
    /// Defaults for the last `defaults.count` parameters.
    let defaults: [JinjaExpr]
    let body: [JinjaNode]
    let line: Int

    init(name: String, parameters: [String], defaults: [JinjaExpr], body: [JinjaNode], line: Int) {
        self.name = name
        self.parameters = parameters
        self.defaults = defaults
        self.body = body
        self.line = line
    }
}
