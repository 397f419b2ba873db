/// A small JSON value type with a strict parser and a deterministic writer.
/// Object key order is preserved (configs are written in a readable order).
///
/// Numbers keep their kind: an integer literal is `.int`, a literal with a '.',
/// 'e' or 'E' (or NaN/Infinity) is `.float`, and each is written back the same
/// way (`.float` always with a '.' or an exponent), so a reader that types its
/// fields strictly gets a float where the source had one. Equality compares kinds
/// too (`.int(2) != .float(2)`); `doubleValue` and `intValue` read either kind.
public enum JSON: Equatable, Sendable {
  case null
  case bool(Bool)
  case int(Int)
  case float(Double)
  case string(String)
  case array([JSON])
  case object([(String, JSON)])

  public static func == (a: JSON, b: JSON) -> Bool {
    switch (a, b) {
    case (.null, .null): return true
    case let (.bool(x), .bool(y)): return x == y
    case let (.int(x), .int(y)): return x == y
    case let (.float(x), .float(y)): return x == y || (x.isNaN && y.isNaN)
    case let (.string(x), .string(y)): return x == y
    case let (.array(x), .array(y)): return x == y
    case let (.object(x), .object(y)):
      return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    default: return false
    }
  }

  /// An unsigned integer: `.int` when it fits, else the nearest `.float`.
  public static func unsigned(_ v: UInt64) -> JSON {
    v <= UInt64(Int.max) ? .int(Int(v)) : .float(Double(v))
  }

  public subscript(key: String) -> JSON? {
    if case let .object(pairs) = self {
      for (k, v) in pairs where k == key { return v }
    }
    return nil
  }

  public var stringValue: String? { if case let .string(s) = self { return s }; return nil }
  /// Either kind of number as a Double.
  public var doubleValue: Double? {
    switch self {
    case let .int(i): return Double(i)
    case let .float(d): return d
    default: return nil
    }
  }
  public var boolValue: Bool? { if case let .bool(b) = self { return b }; return nil }
  public var arrayValue: [JSON]? { if case let .array(a) = self { return a }; return nil }
  public var objectValue: [(String, JSON)]? { if case let .object(o) = self { return o }; return nil }
  public var isNull: Bool { if case .null = self { return true }; return false }
  public var isNumber: Bool { doubleValue != nil }

  /// An integer, or a float with an exact integral value (2.0), or nil.
  public var intValue: Int? {
    switch self {
    case let .int(i): return i
    case let .float(d):
      guard d.isFinite, d == d.rounded(.towardZero), abs(d) < 9.0e15 else { return nil }
      return Int(d)
    default: return nil
    }
  }

  /// The same value with an integer number turned into a float (other values unchanged).
  public var asFloat: JSON {
    if case let .int(i) = self { return .float(Double(i)) }
    return self
  }

  /// Sets (or appends) a key of an object value.
  public mutating func set(_ key: String, _ value: JSON) {
    guard case var .object(pairs) = self else { return }
    if let i = pairs.firstIndex(where: { $0.0 == key }) { pairs[i].1 = value } else { pairs.append((key, value)) }
    self = .object(pairs)
  }

  public mutating func remove(_ key: String) {
    guard case var .object(pairs) = self else { return }
    pairs.removeAll { $0.0 == key }
    self = .object(pairs)
  }
}

// MARK: - Parsing

public struct JSONParser {
  private let bytes: UnsafeRawBufferPointer
  private var pos = 0
  private var depth = 0
  private let what: String

  private init(_ bytes: UnsafeRawBufferPointer, what: String) {
    self.bytes = bytes
    self.what = what
  }

  /// Parses a complete JSON document; trailing whitespace is allowed, anything else is an error.
  public static func parse(_ bytes: UnsafeRawBufferPointer, what: String) throws -> JSON {
    var p = JSONParser(bytes, what: what)
    p.skipWhitespace()
    let value = try p.parseValue()
    p.skipWhitespace()
    guard p.pos == bytes.count else { throw p.fail("unexpected data after the JSON value") }
    return value
  }

  public static func parse(_ text: String, what: String) throws -> JSON {
    var copy = text
    return try copy.withUTF8 { try parse(UnsafeRawBufferPointer($0), what: what) }
  }

  public static func parse(_ bytes: [UInt8], what: String) throws -> JSON {
    try bytes.withUnsafeBytes { try parse($0, what: what) }
  }

  private func fail(_ message: String) -> MoEError {
    MoEError.format("\(what): invalid JSON at byte \(pos): \(message)")
  }

  private mutating func skipWhitespace() {
    while pos < bytes.count {
      let c = bytes[pos]
      if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { pos += 1 } else { break }
    }
  }

  private mutating func parseValue() throws -> JSON {
    guard pos < bytes.count else { throw fail("unexpected end of input") }
    switch bytes[pos] {
    case UInt8(ascii: "{"): return try parseObject()
    case UInt8(ascii: "["): return try parseArray()
    case UInt8(ascii: "\""): return .string(try parseString())
    case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
    case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
    case UInt8(ascii: "n"): try expectLiteral("null"); return .null
    case UInt8(ascii: "N"): try expectLiteral("NaN"); return .float(.nan)
    case UInt8(ascii: "I"): try expectLiteral("Infinity"); return .float(.infinity)
    default: return try parseNumber()
    }
  }

  private mutating func expectLiteral(_ literal: StaticString) throws {
    let n = literal.utf8CodeUnitCount
    guard pos + n <= bytes.count else { throw fail("unexpected end of input") }
    let lit = UnsafeRawBufferPointer(start: literal.utf8Start, count: n)
    for i in 0..<n where bytes[pos + i] != lit[i] { throw fail("invalid literal") }
    pos += n
  }

  private mutating func enter() throws {
    depth += 1
    guard depth <= 512 else { throw fail("nesting deeper than 512") }
  }

  private mutating func parseObject() throws -> JSON {
    try enter(); defer { depth -= 1 }
    pos += 1
    var pairs: [(String, JSON)] = []
    skipWhitespace()
    if pos < bytes.count, bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(pairs) }
    while true {
      skipWhitespace()
      guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
      let key = try parseString()
      skipWhitespace()
      guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else { throw fail("expected ':'") }
      pos += 1
      skipWhitespace()
      pairs.append((key, try parseValue()))
      skipWhitespace()
      guard pos < bytes.count else { throw fail("unexpected end of input in object") }
      if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
      if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(pairs) }
      throw fail("expected ',' or '}'")
    }
  }

  private mutating func parseArray() throws -> JSON {
    try enter(); defer { depth -= 1 }
    pos += 1
    var items: [JSON] = []
    skipWhitespace()
    if pos < bytes.count, bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
    while true {
      skipWhitespace()
      items.append(try parseValue())
      skipWhitespace()
      guard pos < bytes.count else { throw fail("unexpected end of input in array") }
      if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
      if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
      throw fail("expected ',' or ']'")
    }
  }

  private mutating func parseHex4() throws -> UInt32 {
    guard pos + 4 <= bytes.count else { throw fail("truncated \\u escape") }
    var v: UInt32 = 0
    for _ in 0..<4 {
      let c = bytes[pos]
      let d: UInt32
      switch c {
      case 0x30...0x39: d = UInt32(c - 0x30)
      case 0x41...0x46: d = UInt32(c - 0x41 + 10)
      case 0x61...0x66: d = UInt32(c - 0x61 + 10)
      default: throw fail("invalid hex digit in \\u escape")
      }
      v = v * 16 + d
      pos += 1
    }
    return v
  }

  private mutating func parseString() throws -> String {
    pos += 1
    var out: [UInt8] = []
    while true {
      guard pos < bytes.count else { throw fail("unterminated string") }
      let c = bytes[pos]
      if c == UInt8(ascii: "\"") { pos += 1; break }
      if c < 0x20 { throw fail("control character in string") }
      if c != UInt8(ascii: "\\") { out.append(c); pos += 1; continue }
      pos += 1
      guard pos < bytes.count else { throw fail("unterminated escape") }
      let e = bytes[pos]
      pos += 1
      switch e {
      case UInt8(ascii: "\""): out.append(0x22)
      case UInt8(ascii: "\\"): out.append(0x5C)
      case UInt8(ascii: "/"): out.append(0x2F)
      case UInt8(ascii: "b"): out.append(0x08)
      case UInt8(ascii: "f"): out.append(0x0C)
      case UInt8(ascii: "n"): out.append(0x0A)
      case UInt8(ascii: "r"): out.append(0x0D)
      case UInt8(ascii: "t"): out.append(0x09)
      case UInt8(ascii: "u"):
        var scalar = try parseHex4()
        if scalar >= 0xD800 && scalar < 0xDC00 {
          // High surrogate: a low surrogate must follow.
          if pos + 6 <= bytes.count, bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") {
            pos += 2
            let low = try parseHex4()
            if low >= 0xDC00 && low < 0xE000 {
              scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
            } else {
              scalar = 0xFFFD
            }
          } else {
            scalar = 0xFFFD
          }
        } else if scalar >= 0xDC00 && scalar < 0xE000 {
          scalar = 0xFFFD
        }
        let us = Unicode.Scalar(scalar) ?? "\u{FFFD}"
        out.append(contentsOf: Array(String(Character(us)).utf8))
      default: throw fail("invalid escape")
      }
    }
    guard let s = String(validating: out, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
    return s
  }

  /// A number: `.int` for an integer literal that fits an Int, `.float` for a
  /// literal with '.', 'e' or 'E' (and for an integer too large for an Int).
  private mutating func parseNumber() throws -> JSON {
    let start = pos
    if pos < bytes.count, bytes[pos] == UInt8(ascii: "-") {
      pos += 1
      if pos < bytes.count, bytes[pos] == UInt8(ascii: "I") { try expectLiteral("Infinity"); return .float(-.infinity) }
    }
    var digits = 0
    var isFloat = false
    while pos < bytes.count {
      let c = bytes[pos]
      if (c >= 0x30 && c <= 0x39) { digits += 1; pos += 1 }
      else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") { isFloat = true; pos += 1 }
      else if c == UInt8(ascii: "+") || c == UInt8(ascii: "-") { pos += 1 }
      else { break }
    }
    guard digits > 0 else { throw fail("expected a value") }
    let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
    if !isFloat, let i = Int(text) { return .int(i) }
    guard let d = Double(text) else { throw fail("invalid number '\(text)'") }
    return .float(d)
  }
}

// MARK: - Writing

extension JSON {
  /// Serializes; `indent` > 0 pretty-prints with that many spaces per level.
  public func serialized(indent: Int = 0) -> String {
    var out = ""
    write(to: &out, indent: indent, level: 0)
    return out
  }

  private func write(to out: inout String, indent: Int, level: Int) {
    switch self {
    case .null: out += "null"
    case let .bool(b): out += b ? "true" : "false"
    case let .int(i): out += String(i)
    case let .float(d): out += JSON.formatFloat(d)
    case let .string(s): JSON.writeString(s, to: &out)
    case let .array(items):
      if items.isEmpty { out += "[]"; return }
      // Arrays of scalars stay on one line.
      let scalarOnly = items.allSatisfy { if case .array = $0 { return false }; if case .object = $0 { return false }; return true }
      if indent == 0 || scalarOnly {
        out += "["
        for (i, v) in items.enumerated() {
          if i > 0 { out += indent == 0 ? "," : ", " }
          v.write(to: &out, indent: indent, level: level + 1)
        }
        out += "]"
      } else {
        out += "[\n"
        for (i, v) in items.enumerated() {
          out += String(repeating: " ", count: indent * (level + 1))
          v.write(to: &out, indent: indent, level: level + 1)
          out += i + 1 < items.count ? ",\n" : "\n"
        }
        out += String(repeating: " ", count: indent * level) + "]"
      }
    case let .object(pairs):
      if pairs.isEmpty { out += "{}"; return }
      out += indent == 0 ? "{" : "{\n"
      for (i, (k, v)) in pairs.enumerated() {
        if indent > 0 { out += String(repeating: " ", count: indent * (level + 1)) }
        JSON.writeString(k, to: &out)
        out += indent == 0 ? ":" : ": "
        v.write(to: &out, indent: indent, level: level + 1)
        if i + 1 < pairs.count { out += indent == 0 ? "," : ",\n" } else if indent > 0 { out += "\n" }
      }
      if indent > 0 { out += String(repeating: " ", count: indent * level) }
      out += "}"
    }
  }

  /// The shortest text that reads back to `d`, always with a '.' or an
  /// exponent (0.0, 100000.0, 1e-05, 1e+16); NaN and Infinity as Python writes them.
  static func formatFloat(_ d: Double) -> String {
    if d.isNaN { return "NaN" }
    if d.isInfinite { return d > 0 ? "Infinity" : "-Infinity" }
    let text = d.description
    return text.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) ? text : text + ".0"
  }

  static func writeString(_ s: String, to out: inout String) {
    out += "\""
    for u in s.unicodeScalars {
      switch u {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      default:
        if u.value < 0x20 {
          let hex = String(u.value, radix: 16)
          out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        } else {
          out.unicodeScalars.append(u)
        }
      }
    }
    out += "\""
  }
}
