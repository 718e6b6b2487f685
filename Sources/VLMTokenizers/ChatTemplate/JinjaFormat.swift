import Foundation

// String formatting templates reach through Python: `'%s' % x` and the `format` filter (printf-style),
// `'{}'.format(x)` (format-spec mini-language), and `strftime_now` (C strftime, as CPython calls it).

enum JinjaFormat {
    // MARK: - printf-style: format % args

    /// `format % argument` with a single right operand. Like CPython, an operand that supports item access (a
    /// dict or a list) also serves `%(name)s` keys and is never "not all converted".
    static func percent(_ format: String, argument: JinjaValue, interpreter: JinjaInterpreter) throws -> String {
        switch argument {
        case .dictionary(let dictionary):
            return try percent(format, arguments: [argument], mapping: dictionary, mappingLike: true, interpreter: interpreter)
        case .array:
            return try percent(format, arguments: [argument], mapping: nil, mappingLike: true, interpreter: interpreter)
        default:
            return try percent(format, arguments: [argument], mapping: nil, mappingLike: false, interpreter: interpreter)
        }
    }

    /// `format % (a, b, ...)`.
    static func percent(_ format: String, arguments: [JinjaValue], interpreter: JinjaInterpreter) throws -> String {
        try percent(format, arguments: arguments, mapping: nil, mappingLike: false, interpreter: interpreter)
    }

    static func percent(
        _ format: String, arguments: [JinjaValue], mapping: JinjaDictionary?, mappingLike: Bool,
        interpreter: JinjaInterpreter
    ) throws -> String {
        let s = Array(format.unicodeScalars)
        var out = ""
        var i = 0
        var next = 0
        func nextArgument() throws -> JinjaValue {
            guard next < arguments.count else { throw JinjaFailure.type("not enough arguments for format string") }
            next += 1
            return arguments[next - 1]
        }
        func number(_ text: String) -> Int? { text.isEmpty ? nil : Int(text) }
        while i < s.count {
            guard s[i] == "%" else {
                out.unicodeScalars.append(s[i])
                i += 1
                continue
            }
            i += 1
            guard i < s.count else { throw JinjaFailure.type("incomplete format") }
            if s[i] == "%" {
                out += "%"
                i += 1
                continue
            }
            var key: String?
            if s[i] == "(" {
                var depth = 1
                var k = i + 1
                while k < s.count && depth > 0 {
                    if s[k] == "(" { depth += 1 } else if s[k] == ")" { depth -= 1 }
                    k += 1
                }
                guard depth == 0 else { throw JinjaFailure.type("incomplete format key") }
                key = JinjaPython.string(s[(i + 1)..<(k - 1)])
                i = k
            }
            var flags = Set<Unicode.Scalar>()
            while i < s.count, "-+ #0".unicodeScalars.contains(s[i]) {
                flags.insert(s[i])
                i += 1
            }
            var width: Int?
            if i < s.count && s[i] == "*" {
                guard let w = JinjaInterpreter.integerIndex(try nextArgument()) else { throw JinjaFailure.type("* wants int") }
                if w < 0 { flags.insert("-") }
                width = abs(w)
                i += 1
            } else {
                var digits = ""
                while i < s.count, ("0"..."9").contains(s[i]) { digits.unicodeScalars.append(s[i]); i += 1 }
                width = number(digits)
            }
            var precision: Int?
            if i < s.count && s[i] == "." {
                i += 1
                if i < s.count && s[i] == "*" {
                    guard let p = JinjaInterpreter.integerIndex(try nextArgument()) else { throw JinjaFailure.type("* wants int") }
                    precision = max(0, p)
                    i += 1
                } else {
                    var digits = ""
                    while i < s.count, ("0"..."9").contains(s[i]) { digits.unicodeScalars.append(s[i]); i += 1 }
                    precision = number(digits) ?? 0
                }
            }
            while i < s.count, "hlL".unicodeScalars.contains(s[i]) { i += 1 }
            guard i < s.count else { throw JinjaFailure.type("incomplete format") }
            let type = s[i]
            i += 1
            let value: JinjaValue
            if let key {
                guard let mapping else {
                    throw JinjaFailure.type(mappingLike ? "list indices must be integers or slices, not str" : "format requires a mapping")
                }
                guard let found = mapping[key] else { throw JinjaFailure.type("'\(key)'") }
                value = found
            } else {
                value = try nextArgument()
            }
            if let width, width > interpreter.options.maxOutputBytes { throw JinjaFailure(.limit, "format width too large") }
            out += try convertPercent(
                value, type: type, flags: flags, width: width, precision: precision, interpreter: interpreter)
            try interpreter.checkSize(out)
        }
        if next < arguments.count && !mappingLike {
            throw JinjaFailure.type("not all arguments converted during string formatting")
        }
        return out
    }

    private static func convertPercent(
        _ value: JinjaValue, type: Unicode.Scalar, flags: Set<Unicode.Scalar>, width: Int?, precision: Int?,
        interpreter: JinjaInterpreter
    ) throws -> String {
        let left = flags.contains("-")
        func padded(_ body: String, sign: String = "", prefix: String = "", numeric: Bool) -> String {
            let length = sign.unicodeScalars.count + prefix.unicodeScalars.count + body.unicodeScalars.count
            let missing = max(0, (width ?? 0) - length)
            if left { return sign + prefix + body + String(repeating: " ", count: missing) }
            if numeric && flags.contains("0") { return sign + prefix + String(repeating: "0", count: missing) + body }
            return String(repeating: " ", count: missing) + sign + prefix + body
        }
        func signOf(_ negative: Bool) -> String {
            negative ? "-" : flags.contains("+") ? "+" : flags.contains(" ") ? " " : ""
        }
        switch type {
        case "s", "r", "a":
            var text = type == "s"
                ? try interpreter.text(value) : try JinjaPython.repr(value, limit: interpreter.options.maxOutputBytes)
            if let precision { text = JinjaPython.string(text.unicodeScalars.prefix(precision)) }
            return padded(text, numeric: false)
        case "d", "i", "u", "x", "X", "o":
            let integer: Int
            switch value {
            case .int(let v): integer = v
            case .bool(let b): integer = b ? 1 : 0
            case .double(let d) where type == "d" || type == "i" || type == "u":
                guard d.isFinite, let v = Int(exactly: d.rounded(.towardZero)) else { throw JinjaInterpreter.overflow() }
                integer = v
            default:
                let needs = "diu".unicodeScalars.contains(type) ? "a real number" : "an integer"
                throw JinjaFailure.type("%\(type) format: \(needs) is required, not \(JinjaPython.typeName(value))")
            }
            let radix = type == "o" ? 8 : (type == "x" || type == "X") ? 16 : 10
            var digits = String(integer.magnitude, radix: radix, uppercase: type == "X")
            if let precision, digits.count < precision { digits = String(repeating: "0", count: precision - digits.count) + digits }
            let prefix = flags.contains("#") && radix != 10 ? (radix == 8 ? "0o" : type == "X" ? "0X" : "0x") : ""
            return padded(digits, sign: signOf(integer < 0), prefix: prefix, numeric: true)
        case "e", "E", "f", "F", "g", "G":
            guard let number = JinjaPython.number(value) else {
                throw JinjaFailure.type("must be real number, not \(JinjaPython.typeName(value))")
            }
            let x = number.asDouble
            var spec = "%"
            if flags.contains("#") { spec += "#" }
            spec += ".\(min(precision ?? 6, 300))\(Character(type))"
            let body = String(format: spec, abs(x))
            return padded(body, sign: signOf(x.sign == .minus && !x.isNaN), numeric: x.isFinite)
        case "c":
            switch value {
            case .int(let code):
                guard let scalar = UInt32(exactly: code).flatMap(Unicode.Scalar.init) else {
                    throw JinjaFailure.type("%c arg not in range(0x110000)")
                }
                return padded(String(scalar), numeric: false)
            case .string(let text) where text.unicodeScalars.count == 1:
                return padded(text, numeric: false)
            default:
                throw JinjaFailure.type("%c requires int or char")
            }
        default:
            throw JinjaFailure.type("unsupported format character '\(type)' (0x\(String(type.value, radix: 16)))")
        }
    }

    // MARK: - str.format

    static func braces(
        _ format: String, positional: [JinjaValue], keyword: [(String, JinjaValue)], interpreter: JinjaInterpreter
    ) throws -> String {
        let s = Array(format.unicodeScalars)
        var out = ""
        var i = 0
        var automatic = 0
        var usedAutomatic = false, usedManual = false
        while i < s.count {
            let c = s[i]
            if c == "}" {
                guard i + 1 < s.count, s[i + 1] == "}" else { throw JinjaFailure.type("Single '}' encountered in format string") }
                out += "}"
                i += 2
                continue
            }
            guard c == "{" else {
                out.unicodeScalars.append(c)
                i += 1
                continue
            }
            if i + 1 < s.count && s[i + 1] == "{" {
                out += "{"
                i += 2
                continue
            }
            var k = i + 1
            var inBrackets = false
            while k < s.count && (inBrackets || s[k] != "}") {
                if s[k] == "[" { inBrackets = true } else if s[k] == "]" { inBrackets = false }
                if s[k] == "{" && !inBrackets { throw JinjaFailure(.unsupported, "unsupported nested replacement field in format string") }
                k += 1
            }
            guard k < s.count else { throw JinjaFailure.type("expected '}' before end of string") }
            var field = Array(s[(i + 1)..<k])
            i = k + 1
            var spec = ""
            if let colon = field.firstIndex(of: ":") {
                spec = JinjaPython.string(field[(colon + 1)...])
                field = Array(field[..<colon])
            }
            var conversion: Unicode.Scalar?
            if let bang = field.firstIndex(of: "!") {
                guard bang + 2 == field.count else { throw JinjaFailure.type("expected ':' after conversion specifier") }
                conversion = field[bang + 1]
                field = Array(field[..<bang])
            }
            // The first name, then .attribute and [key] accessors.
            var end = 0
            while end < field.count && field[end] != "." && field[end] != "[" { end += 1 }
            let head = JinjaPython.string(field[..<end])
            var value: JinjaValue
            if head.isEmpty {
                if usedManual { throw JinjaFailure.type("cannot switch from manual field specification to automatic field numbering") }
                usedAutomatic = true
                guard automatic < positional.count else {
                    throw JinjaFailure.type("Replacement index \(automatic) out of range for positional args tuple")
                }
                value = positional[automatic]
                automatic += 1
            } else if let index = Int(head) {
                if usedAutomatic { throw JinjaFailure.type("cannot switch from automatic field numbering to manual field specification") }
                usedManual = true
                guard positional.indices.contains(index) else {
                    throw JinjaFailure.type("Replacement index \(index) out of range for positional args tuple")
                }
                value = positional[index]
            } else {
                guard let found = keyword.last(where: { $0.0 == head })?.1 else { throw JinjaFailure.type("'\(head)'") }
                value = found
            }
            var p = end
            while p < field.count {
                if field[p] == "." {
                    var q = p + 1
                    while q < field.count && field[q] != "." && field[q] != "[" { q += 1 }
                    value = try interpreter.getAttribute(value, JinjaPython.string(field[(p + 1)..<q]))
                    p = q
                } else {
                    guard let close = field[p...].firstIndex(of: "]") else { throw JinjaFailure.type("Missing ']' in format string") }
                    let key = JinjaPython.string(field[(p + 1)..<close])
                    value = try interpreter.getItem(value, Int(key).map { .int($0) } ?? .string(key))
                    p = close + 1
                }
            }
            switch conversion {
            case nil: break
            case "s"?: value = .string(try interpreter.text(value))
            case "r"?, "a"?: value = .string(try JinjaPython.repr(value, limit: interpreter.options.maxOutputBytes))
            case let other?: throw JinjaFailure.type("Unknown conversion specifier \(Character(other))")
            }
            out += try formatSpec(value, spec, interpreter: interpreter)
            try interpreter.checkSize(out)
        }
        return out
    }

    /// Python's `format(value, spec)` for strings and numbers.
    static func formatSpec(_ value: JinjaValue, _ spec: String, interpreter: JinjaInterpreter) throws -> String {
        if spec.isEmpty { return try interpreter.text(value) }
        var s = Array(spec.unicodeScalars)
        var fill: Unicode.Scalar = " "
        var align: Character?
        if s.count >= 2, "<>=^".unicodeScalars.contains(s[1]) {
            fill = s[0]
            align = Character(s[1])
            s.removeFirst(2)
        } else if let first = s.first, "<>=^".unicodeScalars.contains(first) {
            align = Character(first)
            s.removeFirst()
        }
        var sign: Unicode.Scalar = "-"
        if let first = s.first, "+- ".unicodeScalars.contains(first) {
            sign = first
            s.removeFirst()
        }
        if s.first == "z" { s.removeFirst() }
        var alternate = false
        if s.first == "#" {
            alternate = true
            s.removeFirst()
        }
        if s.first == "0" {
            if align == nil {
                fill = "0"
                align = "="
            }
            s.removeFirst()
        }
        var widthDigits = ""
        while let first = s.first, ("0"..."9").contains(first) { widthDigits.unicodeScalars.append(first); s.removeFirst() }
        var grouping: Unicode.Scalar?
        if let first = s.first, first == "," || first == "_" {
            grouping = first
            s.removeFirst()
        }
        var precision: Int?
        if s.first == "." {
            s.removeFirst()
            var digits = ""
            while let first = s.first, ("0"..."9").contains(first) { digits.unicodeScalars.append(first); s.removeFirst() }
            guard let p = Int(digits) else { throw JinjaFailure.type("Format specifier missing precision") }
            precision = p
        }
        guard s.count <= 1 else { throw JinjaFailure.type("Invalid format specifier '\(spec)'") }
        let type = s.first
        let width = Int(widthDigits) ?? 0
        if width > interpreter.options.maxOutputBytes { throw JinjaFailure(.limit, "format width too large") }

        func finish(_ body: String, signText: String = "", prefix: String = "", defaultAlign: Character) -> String {
            let content = Array((signText + prefix + body).unicodeScalars)
            let chosen = align ?? defaultAlign
            if chosen == "=" {
                let missing = max(0, width - content.count)
                return signText + prefix + String(repeating: String(fill), count: missing) + body
            }
            return JinjaMethods.pad(content, width: width, fill: fill, align: chosen, centerLikeStr: false)
        }
        func group(_ digits: String) -> String {
            guard let grouping else { return digits }
            let parts = digits.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
            var integer = Array(parts[0])
            var grouped: [Character] = []
            while integer.count > 3 {
                grouped = [Character(grouping)] + integer.suffix(3) + grouped
                integer.removeLast(3)
            }
            let result = String(integer + grouped)
            return parts.count > 1 ? result + "." + parts[1] : result
        }

        switch value {
        case .string(let text):
            if let type, type != "s" {
                throw JinjaFailure.type("Unknown format code '\(Character(type))' for object of type 'str'")
            }
            if align == "=" { throw JinjaFailure.type("'=' alignment not allowed in string format specifier") }
            var scalars = Array(text.unicodeScalars)
            if let precision { scalars = Array(scalars.prefix(precision)) }
            return finish(JinjaPython.string(scalars), defaultAlign: "<")
        case .int, .bool, .double:
            guard let number = JinjaPython.number(value) else { break }
            let signText: (Bool) -> String = { negative in
                negative ? "-" : sign == "+" ? "+" : sign == " " ? " " : ""
            }
            if case .int(let integer) = number, type.map({ "dnbBoxXc".unicodeScalars.contains($0) }) ?? true {
                if precision != nil { throw JinjaFailure.type("Precision not allowed in integer format specifier") }
                switch type {
                case "c"?:
                    guard let scalar = UInt32(exactly: integer).flatMap(Unicode.Scalar.init) else {
                        throw JinjaFailure.type("%c arg not in range(0x110000)")
                    }
                    return finish(String(scalar), defaultAlign: ">")
                case let radixType? where "boxX".unicodeScalars.contains(radixType):
                    let radix = radixType == "b" ? 2 : radixType == "o" ? 8 : 16
                    let digits = String(integer.magnitude, radix: radix, uppercase: radixType == "X")
                    let prefix = alternate ? "0" + String(Character(radixType)) : ""
                    return finish(digits, signText: signText(integer < 0), prefix: prefix, defaultAlign: ">")
                default:
                    return finish(group(String(integer.magnitude)), signText: signText(integer < 0), defaultAlign: ">")
                }
            }
            let x = number.asDouble
            var body: String
            switch type {
            case nil:
                if let precision {
                    body = String(format: "%.\(max(precision, 1))g", abs(x))
                    if x.isFinite, !body.contains("."), !body.contains("e") { body += ".0" }
                } else {
                    body = JinjaPython.floatRepr(abs(x))
                }
            case "%"?:
                body = String(format: "%.\(precision ?? 6)f", abs(x) * 100) + "%"
            case let t? where "eEfFgGn".unicodeScalars.contains(t):
                let c = t == "n" ? "g" : String(Character(t))
                body = String(format: "%\(alternate ? "#" : "").\(min(precision ?? 6, 300))\(c)", abs(x))
            case let t?:
                throw JinjaFailure.type("Unknown format code '\(Character(t))' for object of type 'float'")
            }
            if x.isNaN { body = (type == "E" || type == "F" || type == "G") ? "NAN" : "nan" }
            return finish(group(body), signText: signText(x.sign == .minus && !x.isNaN), defaultAlign: ">")
        default:
            break
        }
        throw JinjaFailure.type("unsupported format string passed to \(JinjaPython.typeName(value)).__format__")
    }

    // MARK: - strftime

    /// C `strftime` of `date` in `timeZone` (nil: local time), as Python's `datetime.now().strftime(format)`.
    static func formatTime(_ format: String, date: Date, timeZone: TimeZone?) throws -> String {
        if format.isEmpty { return "" }
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        if let timeZone {
            seconds += time_t(timeZone.secondsFromGMT(for: date))
            gmtime_r(&seconds, &parts)
        } else {
            localtime_r(&seconds, &parts)
        }
        var capacity = 256
        while capacity <= 1 << 16 {
            var buffer = [CChar](repeating: 0, count: capacity)
            let count = format.withCString { strftime(&buffer, capacity, $0, &parts) }
            if count > 0 {
                return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            capacity *= 4
        }
        return ""
    }
}
