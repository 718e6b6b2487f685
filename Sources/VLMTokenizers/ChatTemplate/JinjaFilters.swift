import Foundation

// Jinja's built-in filters and tests (jinja2 3.1.6 filters.py and tests.py) with transformers' `tojson`.
// Filters that are generators in Jinja (select, map, unique, items, batch, reverse of a list) return a one-shot
// iterator object, so that printing, truthiness and `length` behave as they do there.

extension JinjaInterpreter {
    /// Jinja filters this interpreter does not implement; using one is an "unsupported" error rather than "unknown".
    static let unsupportedFilters: Set<String> = [
        "filesizeformat", "groupby", "pprint", "random", "slice", "striptags", "urlencode", "urlize", "wordwrap", "xmlattr",
    ]

    static let supportedFilters: Set<String> = [
        "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first",
        "float", "forceescape", "format", "indent", "int", "items", "join", "last", "length", "list", "lower", "map",
        "max", "min", "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort",
        "string", "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "wordcount",
    ]

    static let supportedTests: Set<String> = [
        "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number", "string", "mapping",
        "sequence", "iterable", "callable", "even", "odd", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt",
        "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=", "in", "lower", "upper", "sameas",
        "escaped", "filter", "test",
    ]

    func applyFilter(_ name: String, _ value: JinjaValue, _ arguments: JinjaArguments, _ scope: JinjaScope) throws -> JinjaValue {
        let (positional, keyword) = try evaluateArguments(arguments, scope)
        return try filter(name, value, positional, keyword)
    }

    func applyTest(_ name: String, _ value: JinjaValue, _ arguments: JinjaArguments, _ scope: JinjaScope) throws -> Bool {
        let (positional, keyword) = try evaluateArguments(arguments, scope)
        return try test(name, value, positional, keyword)
    }

    private func iterator(_ items: [JinjaValue], _ typeName: String = "generator") -> JinjaValue {
        .object(JinjaObject(.iterator(typeName: typeName), items: items))
    }

    /// Jinja's make_attrgetter: follows a dotted path of items (`"a.0.b"`), optionally lower-casing strings and
    /// replacing an Undefined result with `default`.
    private func attributeGetter(
        _ attribute: JinjaValue?, lowercase: Bool = false, default fallback: JinjaValue? = nil
    ) -> (JinjaValue) throws -> JinjaValue {
        var parts: [JinjaValue] = []
        switch attribute {
        case .string(let path)?:
            parts = path.split(separator: ".", omittingEmptySubsequences: false).map { part in
                Int(part).map { JinjaValue.int($0) } ?? .string(String(part))
            }
        case .none?, nil: break
        case let other?: parts = [other]
        }
        return { [unowned self] value in
            var item = value
            for part in parts {
                item = try self.getItem(item, part)
                if let fallback, case .undefined = item { item = fallback }
            }
            if lowercase, case .string(let text) = item { item = .string(JinjaMethods.lower(text)) }
            return item
        }
    }

    /// A stable sort with Python's `<` (`sorted(..., key=, reverse=)`); mixed types are a TypeError.
    private func sortedValues(
        _ items: [JinjaValue], reverse: Bool, key: (JinjaValue) throws -> JinjaValue
    ) throws -> [JinjaValue] {
        let keyed = try items.map { (key: try key($0), value: $0) }
        try charge(keyed.count)
        func less(_ a: JinjaValue, _ b: JinjaValue) throws -> Bool {
            reverse ? try JinjaPython.compare(b, .lt, a) : try JinjaPython.compare(a, .lt, b)
        }
        func mergeSort(_ slice: ArraySlice<(key: JinjaValue, value: JinjaValue)>) throws -> [(key: JinjaValue, value: JinjaValue)] {
            guard slice.count > 1 else { return Array(slice) }
            let middle = slice.startIndex + slice.count / 2
            let left = try mergeSort(slice[..<middle]), right = try mergeSort(slice[middle...])
            var merged: [(key: JinjaValue, value: JinjaValue)] = []
            merged.reserveCapacity(slice.count)
            var i = 0, j = 0
            while i < left.count && j < right.count {
                if try less(right[j].key, left[i].key) {
                    merged.append(right[j]); j += 1
                } else {
                    merged.append(left[i]); i += 1
                }
            }
            merged += left[i...]
            merged += right[j...]
            return merged
        }
        return try mergeSort(keyed[...]).map(\.value)
    }

    private func ignoreCase(_ value: JinjaValue) -> JinjaValue {
        if case .string(let text) = value { return .string(JinjaMethods.lower(text)) }
        return value
    }

    private func lengthOf(_ value: JinjaValue) throws -> Int {
        switch value {
        case .string(let text): return text.unicodeScalars.count
        case .array(let items): return items.count
        case .dictionary(let dictionary): return dictionary.count
        case .undefined: return 0
        default: throw JinjaFailure.type("object of type '\(JinjaPython.typeName(value))' has no len()")
        }
    }

    // MARK: - Filters

    func filter(_ name: String, _ value: JinjaValue, _ positional: [JinjaValue], _ keyword: [(String, JinjaValue)]) throws -> JinjaValue {
        func bind(_ names: [String], required: Int = 0) throws -> [JinjaValue?] {
            try jinjaBind(name, names, positional, keyword, required: required)
        }
        func flag(_ value: JinjaValue?) -> Bool { value.map(JinjaPython.truthy) ?? false }
        // str(value), computed only by the filters that need it (a huge list may reach `length`).
        func valueText() throws -> String { try text(value) }
        // These filters do arithmetic or int()/float() on the value, which Undefined refuses.
        if case .undefined(let message) = value, ["int", "float", "indent"].contains(name) {
            throw JinjaFailure(.runtime, message)
        }

        switch name {
        case "abs":
            _ = try bind([])
            switch JinjaPython.number(value) {
            case .int(let i)?:
                guard i != .min else { throw JinjaInterpreter.overflow() }
                return .int(abs(i))
            case .double(let d)?: return .double(abs(d))
            case nil: throw JinjaFailure.type("bad operand type for abs(): '\(JinjaPython.typeName(value))'")
            }
        case "attr":
            let args = try bind(["name"], required: 1)
            guard case .string(let attribute)? = args[0] else { throw JinjaFailure.type("attribute name must be a string") }
            return try getAttribute(value, attribute, itemFallback: false)
        case "batch":
            let args = try bind(["linecount", "fill_with"], required: 1)
            guard let size = args[0].flatMap(JinjaInterpreter.integerIndex), size > 0 else {
                throw JinjaFailure.type("batch size must be a positive integer")
            }
            var batches: [JinjaValue] = []
            var current: [JinjaValue] = []
            for item in try iterate(value) {
                if current.count == size {
                    batches.append(.array(current))
                    current = []
                }
                current.append(item)
            }
            if !current.isEmpty {
                if let fill = args[1], fill != .none, current.count < size {
                    current += [JinjaValue](repeating: fill, count: size - current.count)
                }
                batches.append(.array(current))
            }
            return iterator(batches)
        case "capitalize":
            _ = try bind([])
            return .string(JinjaMethods.capitalize(try valueText()))
        case "center":
            let args = try bind(["width"])
            let width = args[0].flatMap(JinjaInterpreter.integerIndex) ?? 80
            if width > options.maxOutputBytes { throw JinjaFailure(.limit, "center() width too large") }
            return .string(JinjaMethods.pad(Array(try valueText().unicodeScalars), width: width, fill: " ", align: "^"))
        case "count", "length":
            _ = try bind([])
            return .int(try lengthOf(value))
        case "d", "default":
            let args = try bind(["default_value", "boolean"])
            if case .undefined = value { return args[0] ?? "" }
            if flag(args[1]) && !JinjaPython.truthy(value) { return args[0] ?? "" }
            return value
        case "dictsort":
            let args = try bind(["case_sensitive", "by", "reverse"])
            guard case .dictionary(let dictionary) = value else {
                if case .undefined(let message) = value { throw JinjaFailure(.runtime, message) }
                throw JinjaFailure.type("'\(JinjaPython.typeName(value))' object has no attribute 'items'")
            }
            let position: Int
            switch args[1] {
            case nil, .string("key")?: position = 0
            case .string("value")?: position = 1
            default: throw JinjaFailure.type("You can only sort by either \"key\" or \"value\"")
            }
            let pairs = dictionary.pairs.map { JinjaValue.array([.string($0.key), $0.value]) }
            let caseSensitive = flag(args[0])
            return .array(try sortedValues(pairs, reverse: flag(args[2])) { pair in
                guard case .array(let parts) = pair else { return pair }
                return caseSensitive ? parts[position] : self.ignoreCase(parts[position])
            })
        case "e", "escape", "forceescape":
            _ = try bind([])
            var escaped = ""
            for character in try valueText().unicodeScalars {
                switch character {
                case "&": escaped += "&amp;"
                case "<": escaped += "&lt;"
                case ">": escaped += "&gt;"
                case "\"": escaped += "&#34;"
                case "'": escaped += "&#39;"
                default: escaped.unicodeScalars.append(character)
                }
            }
            return .string(escaped)
        case "first":
            _ = try bind([])
            if case .object(let object) = value, case .iterator = object.kind {
                guard object.position < object.items.count else { return .undefined("No first item, sequence was empty.") }
                object.position += 1
                return object.items[object.position - 1]
            }
            return try iterate(value).first ?? .undefined("No first item, sequence was empty.")
        case "last":
            _ = try bind([])
            switch value {
            case .array, .string, .dictionary, .undefined:
                return try iterate(value).last ?? .undefined("No last item, sequence was empty.")
            default:
                throw JinjaFailure.type("'\(JinjaPython.typeName(value))' object is not reversible")
            }
        case "float":
            let args = try bind(["default"])
            return JinjaInterpreter.pythonFloat(value).map { .double($0) } ?? args[0] ?? .double(0)
        case "format":
            if !positional.isEmpty && !keyword.isEmpty {
                throw JinjaFailure.type("can't handle positional and keyword arguments at the same time")
            }
            if !keyword.isEmpty {
                return .string(try JinjaFormat.percent(
                    try valueText(), argument: .dictionary(JinjaDictionary(keyword)), interpreter: self))
            }
            return .string(try JinjaFormat.percent(try valueText(), arguments: positional, interpreter: self))
        case "indent":
            let args = try bind(["width", "first", "blank"])
            guard case .string = value else {
                throw JinjaFailure.type("unsupported operand type(s) for +=: '\(JinjaPython.typeName(value))' and 'str'")
            }
            let indentation: String
            switch args[0] {
            case .string(let given)?: indentation = given
            case let given?:
                let width = JinjaInterpreter.integerIndex(given) ?? 4
                if width > options.maxOutputBytes { throw JinjaFailure(.limit, "indent() width too large") }
                indentation = String(repeating: " ", count: max(0, width))
            case nil: indentation = "    "
            }
            var lines = JinjaMethods.splitLines(try valueText() + "\n", keepEnds: false)
            let (bytes, overflow) = indentation.utf8.count.multipliedReportingOverflow(by: lines.count)
            if overflow || bytes > options.maxOutputBytes {
                throw JinjaFailure(.limit, "the template built a string over \(options.maxOutputBytes) bytes")
            }
            var result: String
            if flag(args[2]) {
                result = lines.joined(separator: "\n" + indentation)
            } else {
                result = lines.isEmpty ? "" : lines.removeFirst()
                if !lines.isEmpty {
                    result += "\n" + lines.map { $0.isEmpty ? $0 : indentation + $0 }.joined(separator: "\n")
                }
            }
            if flag(args[1]) { result = indentation + result }
            try checkSize(result)
            return .string(result)
        case "int":
            let args = try bind(["default", "base"])
            let base = args[1].flatMap(JinjaInterpreter.integerIndex) ?? 10
            if case .string(let s) = value, let parsed = JinjaInterpreter.pythonInt(s, base: base) { return .int(parsed) }
            switch value {
            case .int(let i): return .int(i)
            case .bool(let b): return .int(b ? 1 : 0)
            default: break
            }
            if let d = JinjaInterpreter.pythonFloat(value), d.isFinite {
                guard let i = Int(exactly: d.rounded(.towardZero)) else { throw JinjaInterpreter.overflow() }
                return .int(i)
            }
            if let d = JinjaInterpreter.pythonFloat(value), d.isInfinite {
                throw JinjaFailure.type("cannot convert float infinity to integer")
            }
            return args[0] ?? .int(0)
        case "items":
            _ = try bind([])
            switch value {
            case .undefined: return iterator([])
            case .dictionary(let dictionary): return iterator(dictionary.pairs.map { .array([.string($0.key), $0.value]) })
            default: throw JinjaFailure.type("Can only get item pairs from a mapping.")
            }
        case "join":
            let args = try bind(["d", "attribute"])
            let getter = attributeGetter(args[1])
            let separator = try args[0].map(text) ?? ""
            var result = ""
            for (index, item) in try iterate(value).enumerated() {
                if index > 0 { result += separator }
                result += try text(try getter(item))
                try checkSize(result)
            }
            return .string(result)
        case "list":
            _ = try bind([])
            return .array(try iterate(value))
        case "lower":
            _ = try bind([])
            return .string(JinjaMethods.lower(try valueText()))
        case "upper":
            _ = try bind([])
            return .string(JinjaMethods.upper(try valueText()))
        case "title":
            _ = try bind([])
            // do_title: split before runs of [-\s({\[<], then upper-case each piece's first character.
            var out = ""
            var piece = String.UnicodeScalarView()
            var inSeparators = false
            func flushPiece() {
                guard let first = piece.first else { return }
                out += JinjaMethods.upper(String(first)) + JinjaMethods.lower(String(piece.dropFirst()))
                piece = String.UnicodeScalarView()
            }
            for scalar in try valueText().unicodeScalars {
                let isSeparator = "-({[<".unicodeScalars.contains(scalar) || JinjaPython.isWhitespace(scalar)
                if isSeparator != inSeparators {
                    if isSeparator { flushPiece() } else { out += String(piece); piece = String.UnicodeScalarView() }
                    inSeparators = isSeparator
                }
                piece.append(scalar)
            }
            if inSeparators { out += String(piece) } else { flushPiece() }
            return .string(out)
        case "map":
            guard JinjaPython.truthy(value) else { return iterator([]) }
            let transform: (JinjaValue) throws -> JinjaValue
            if positional.isEmpty, let attribute = keyword.first(where: { $0.0 == "attribute" })?.1 {
                let fallback = keyword.first(where: { $0.0 == "default" })?.1
                if let unexpected = keyword.first(where: { $0.0 != "attribute" && $0.0 != "default" }) {
                    throw JinjaFailure.type("Unexpected keyword argument '\(unexpected.0)'")
                }
                transform = attributeGetter(attribute, default: fallback)
            } else {
                guard case .string(let filterName)? = positional.first else {
                    throw JinjaFailure.type("map requires a filter name or attribute=")
                }
                let rest = Array(positional.dropFirst())
                transform = { [unowned self] item in try self.filter(filterName, item, rest, keyword) }
            }
            return iterator(try iterate(value).map(transform))
        case "max", "min":
            let args = try bind(["case_sensitive", "attribute"])
            let items = try iterate(value)
            guard var best = items.first else { return .undefined("No aggregated item, sequence was empty.") }
            let getter = attributeGetter(args[1], lowercase: !flag(args[0]))
            var bestKey = try getter(best)
            for item in items.dropFirst() {
                let key = try getter(item)
                if try JinjaPython.compare(key, name == "max" ? .gt : .lt, bestKey) {
                    best = item
                    bestKey = key
                }
            }
            return best
        case "select", "reject", "selectattr", "rejectattr":
            let byAttribute = name.hasSuffix("attr")
            var rest = positional
            var transform: (JinjaValue) throws -> JinjaValue = { $0 }
            if byAttribute {
                guard !rest.isEmpty else { throw JinjaFailure.type("\(name)() missing the attribute name") }
                transform = attributeGetter(rest.removeFirst())
            }
            var check: (JinjaValue) throws -> Bool = { JinjaPython.truthy($0) }
            if !rest.isEmpty {
                guard case .string(let testName) = rest.removeFirst() else { throw JinjaFailure.type("test name must be a string") }
                let testArguments = rest
                check = { [unowned self] item in try self.test(testName, item, testArguments, keyword) }
            }
            let keep = name.hasPrefix("select")
            guard JinjaPython.truthy(value) else { return iterator([]) }
            return iterator(try iterate(value).filter { try check(try transform($0)) == keep })
        case "replace":
            let args = try bind(["old", "new", "count"], required: 2)
            let count = args[2].flatMap { $0 == .none ? nil : JinjaInterpreter.integerIndex($0) } ?? -1
            let result = try JinjaMethods.replace(
                try valueText(), try text(args[0] ?? ""), try text(args[1] ?? ""), count: count,
                limit: options.maxOutputBytes)
            try checkSize(result)
            return .string(result)
        case "reverse":
            _ = try bind([])
            switch value {
            case .string(let s): return .string(JinjaPython.string(s.unicodeScalars.reversed()))
            case .array(let items): return iterator(items.reversed(), "list_reverseiterator")
            case .dictionary(let dictionary): return iterator(dictionary.keys.reversed().map { .string($0) }, "dict_reversekeyiterator")
            default:
                guard let items = try? iterate(value) else { throw JinjaFailure.type("argument must be iterable") }
                return .array(items.reversed())
            }
        case "round":
            let args = try bind(["precision", "method"])
            let precision = args[0].flatMap(JinjaInterpreter.integerIndex) ?? 0
            let method = args[1].map(JinjaPython.str) ?? "common"
            guard ["common", "ceil", "floor"].contains(method) else {
                throw JinjaFailure.type("method must be common, ceil or floor")
            }
            guard let number = JinjaPython.number(value) else {
                throw JinjaFailure.type("type \(JinjaPython.typeName(value)) doesn't define __round__ method")
            }
            if method == "common" {
                // round(int, n) stays an int; round(float, n) is a float.
                if case .int(let i) = number {
                    if precision >= 0 { return .int(i) }
                    return .int(Int(JinjaInterpreter.pythonRound(Double(i), precision)))
                }
                return .double(JinjaInterpreter.pythonRound(number.asDouble, precision))
            }
            let scale = Foundation.pow(10.0, Double(precision))
            let scaled = number.asDouble * scale
            return .double((method == "ceil" ? scaled.rounded(.up) : scaled.rounded(.down)) / scale)
        case "safe", "string":
            _ = try bind([])
            if case .string = value { return value }
            return .string(try valueText())
        case "sort":
            let args = try bind(["reverse", "case_sensitive", "attribute"])
            let attributes: [JinjaValue?]
            if case .string(let path)? = args[2], path.contains(",") {
                attributes = path.split(separator: ",").map { .string($0.trimmingCharacters(in: .whitespaces)) }
            } else {
                attributes = [args[2]]
            }
            let getters = attributes.map { attributeGetter($0, lowercase: !flag(args[1])) }
            return .array(try sortedValues(try iterate(value), reverse: flag(args[0])) { item in
                getters.count == 1 ? try getters[0](item) : .array(try getters.map { try $0(item) })
            })
        case "sum":
            let args = try bind(["attribute", "start"])
            let getter = attributeGetter(args[0])
            var total = args[1] ?? .int(0)
            for item in try iterate(value) {
                let addend = try getter(item)
                if case .string = addend { throw JinjaFailure.type("sum() can't sum strings [use ''.join(seq) instead]") }
                total = try binary(.add, total, addend)
            }
            return total
        case "tojson":
            let args = try bind(["ensure_ascii", "indent", "separators", "sort_keys"])
            var separators: (String, String)?
            if let given = args[2], given != .none {
                let parts = try iterate(given)
                guard parts.count == 2, case .string(let item) = parts[0], case .string(let key) = parts[1] else {
                    throw JinjaFailure.type("separators must be a pair of strings")
                }
                separators = (item, key)
            }
            var indent: String?
            switch args[1] {
            case nil, .none?: indent = nil
            case .string(let s)?: indent = s
            case let other?:
                guard let count = JinjaInterpreter.integerIndex(other) else {
                    throw JinjaFailure.type("indent must be an int or a string")
                }
                indent = String(repeating: " ", count: max(0, min(count, 1024)))
            }
            let json = try JinjaJSON.dumps(
                value, ensureASCII: flag(args[0]), indent: indent, separators: separators, sortKeys: flag(args[3]),
                limit: options.maxOutputBytes)
            try checkSize(json)
            return .string(json)
        case "trim":
            let args = try bind(["chars"])
            let characters: String? = try args[0].flatMap { $0 == .none ? nil : try text($0) }
            return .string(JinjaPython.strip(try valueText(), characters: characters, leading: true, trailing: true))
        case "truncate":
            let args = try bind(["length", "killwords", "end", "leeway"])
            let length = args[0].flatMap(JinjaInterpreter.integerIndex) ?? 255
            let end = Array((args[2].map(JinjaPython.str) ?? "...").unicodeScalars)
            let leeway = args[3].flatMap(JinjaInterpreter.integerIndex) ?? 5
            guard length >= end.count else { throw JinjaFailure.type("expected length >= \(end.count), got \(length)") }
            guard leeway >= 0 else { throw JinjaFailure.type("expected leeway >= 0, got \(leeway)") }
            guard case .string = value else {
                // do_truncate takes len() of the value itself; short sequences pass through unchanged.
                if try lengthOf(value) <= length + leeway { return value }
                throw JinjaFailure(.unsupported, "unsupported truncate of a '\(JinjaPython.typeName(value))'")
            }
            let s = Array(try valueText().unicodeScalars)
            if s.count <= length + leeway { return .string(try valueText()) }
            let head = Array(s[..<(length - end.count)])
            if flag(args[1]) { return .string(JinjaPython.string(head + end)) }
            let kept = try JinjaMethods.split(JinjaPython.string(head), separator: " ", maxSplit: 1, fromRight: true)[0]
            return .string(kept + JinjaPython.string(end))
        case "unique":
            let args = try bind(["case_sensitive", "attribute"])
            let getter = attributeGetter(args[1], lowercase: !flag(args[0]))
            var seen: [JinjaValue] = []
            var result: [JinjaValue] = []
            for item in try iterate(value) {
                let key = try getter(item)
                switch key {
                case .array, .dictionary: throw JinjaFailure.type("unhashable type: '\(JinjaPython.typeName(key))'")
                default: break
                }
                try charge(seen.count)
                if !seen.contains(where: { JinjaPython.equals($0, key) }) {
                    seen.append(key)
                    result.append(item)
                }
            }
            return iterator(result)
        case "wordcount":
            _ = try bind([])
            var count = 0
            var inWord = false
            for scalar in try valueText().unicodeScalars {
                let isWord = scalar == "_" || JinjaMethods.isWordCharacter(scalar)
                if isWord && !inWord { count += 1 }
                inWord = isWord
            }
            return .int(count)
        default:
            if JinjaInterpreter.unsupportedFilters.contains(name) {
                throw JinjaFailure(.unsupported, "unsupported filter '\(name)'")
            }
            throw JinjaFailure(.runtime, "No filter named '\(name)'.")
        }
    }

    // MARK: - Tests

    func test(_ name: String, _ value: JinjaValue, _ positional: [JinjaValue], _ keyword: [(String, JinjaValue)]) throws -> Bool {
        func other() throws -> JinjaValue {
            try jinjaBind(name, ["other"], positional, keyword, required: 1)[0] ?? .none
        }
        func none() throws { _ = try jinjaBind(name, [], positional, keyword) }
        switch name {
        case "defined", "undefined":
            try none()
            if case .undefined = value { return name == "undefined" }
            return name == "defined"
        case "none":
            try none()
            return value == .none
        case "boolean":
            try none()
            if case .bool = value { return true }
            return false
        case "true", "false":
            try none()
            return value == .bool(name == "true")
        case "integer":
            try none()
            if case .int = value { return true }
            return false
        case "float":
            try none()
            if case .double = value { return true }
            return false
        case "number":
            try none()
            return JinjaPython.number(value) != nil
        case "string":
            try none()
            if case .string = value { return true }
            return false
        case "mapping":
            try none()
            if case .dictionary = value { return true }
            return false
        case "sequence":
            try none()
            switch value {
            case .string, .array, .dictionary, .undefined: return true  // Undefined has __len__ and __getitem__
            default: return false
            }
        case "iterable":
            try none()
            switch value {
            case .string, .array, .dictionary, .undefined: return true
            case .object(let object):
                if case .iterator = object.kind { return true }
                return false
            default: return false
            }
        case "callable":
            try none()
            guard case .object(let object) = value else { return false }
            switch object.kind {
            case .macro, .function, .method: return true
            default: return false
            }
        case "even", "odd":
            try none()
            let remainder = try binary(.modulo, value, .int(2))
            return JinjaPython.equals(remainder, .int(name == "even" ? 0 : 1))
        case "divisibleby":
            return JinjaPython.equals(try binary(.modulo, value, try other()), .int(0))
        case "eq", "equalto", "==":
            return JinjaPython.equals(value, try other())
        case "ne", "!=":
            return !JinjaPython.equals(value, try other())
        case "lt", "lessthan", "<":
            return try JinjaPython.compare(value, .lt, try other())
        case "le", "<=":
            return try JinjaPython.compare(value, .le, try other())
        case "gt", "greaterthan", ">":
            return try JinjaPython.compare(value, .gt, try other())
        case "ge", ">=":
            return try JinjaPython.compare(value, .ge, try other())
        case "in":
            return try contains(try other(), value)
        case "lower", "upper":
            try none()
            let scalars = Array(try text(value).unicodeScalars)
            let cased = scalars.filter { $0.properties.isCased }
            guard !cased.isEmpty else { return false }
            return name == "lower"
                ? !scalars.contains { $0.properties.isUppercase || $0.properties.generalCategory == .titlecaseLetter }
                : !scalars.contains { $0.properties.isLowercase || $0.properties.generalCategory == .titlecaseLetter }
        case "sameas":
            let target = try other()
            switch (value, target) {
            case (.object(let a), .object(let b)): return a === b
            case (.none, .none): return true
            case let (.bool(a), .bool(b)): return a == b
            case let (.int(a), .int(b)): return a == b && (-5...256).contains(a)  // CPython's small-int cache
            default: return false
            }
        case "escaped":
            try none()
            return false
        case "filter":
            try none()
            if case .string(let filterName) = value {
                return JinjaInterpreter.supportedFilters.contains(filterName) || JinjaInterpreter.unsupportedFilters.contains(filterName)
            }
            return false
        case "test":
            try none()
            if case .string(let testName) = value { return JinjaInterpreter.supportedTests.contains(testName) }
            return false
        default:
            throw JinjaFailure(.runtime, "No test named '\(name)'.")
        }
    }

    // MARK: - Python number parsing

    /// Python's `float(value)` for the int/float filters; nil where Python raises TypeError or ValueError.
    static func pythonFloat(_ value: JinjaValue) -> Double? {
        switch value {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        case .string(let s):
            let trimmed = JinjaPython.strip(s, characters: nil, leading: true, trailing: true)
            let lowered = trimmed.lowercased()
            let unsigned = lowered.hasPrefix("-") || lowered.hasPrefix("+") ? String(lowered.dropFirst()) : lowered
            if ["inf", "infinity"].contains(unsigned) { return lowered.hasPrefix("-") ? -.infinity : .infinity }
            if unsigned == "nan" { return .nan }
            guard !unsigned.isEmpty, unsigned.unicodeScalars.allSatisfy({ "0123456789._e+-".unicodeScalars.contains($0) }),
                !trimmed.hasPrefix("_"), !trimmed.hasSuffix("_"), !trimmed.contains("__")
            else { return nil }
            return Double(trimmed.replacingOccurrences(of: "_", with: ""))
        default: return nil
        }
    }

    /// Python's `int(text, base)`: surrounding whitespace, a sign, single underscores between digits.
    static func pythonInt(_ text: String, base: Int) -> Int? {
        var s = Substring(JinjaPython.strip(text, characters: nil, leading: true, trailing: true))
        var negative = false
        if s.first == "+" || s.first == "-" {
            negative = s.first == "-"
            s = s.dropFirst()
        }
        if base == 16, s.lowercased().hasPrefix("0x") { s = s.dropFirst(2) }
        if base == 8, s.lowercased().hasPrefix("0o") { s = s.dropFirst(2) }
        if base == 2, s.lowercased().hasPrefix("0b") { s = s.dropFirst(2) }
        guard !s.isEmpty, !s.hasPrefix("_"), !s.hasSuffix("_"), !s.contains("__"), (2...36).contains(base) else { return nil }
        guard let magnitude = Int(s.replacingOccurrences(of: "_", with: ""), radix: base) else { return nil }
        return negative ? -magnitude : magnitude
    }

    /// Python's `round(x, n)`: correctly rounded, ties to even, as `"%.nf"` formatting rounds.
    static func pythonRound(_ x: Double, _ digits: Int) -> Double {
        guard x.isFinite else { return x }
        if digits >= 0 {
            return Double(String(format: "%.\(min(digits, 340))f", x)) ?? x
        }
        let scale = Foundation.pow(10.0, Double(-digits))
        return (x / scale).rounded(.toNearestOrEven) * scale
    }
}
