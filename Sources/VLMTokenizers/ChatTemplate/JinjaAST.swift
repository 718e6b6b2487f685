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
