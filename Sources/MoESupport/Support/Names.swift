/// An enum whose cases each have one canonical name: lower case, words joined
/// by '-'. These are the names of the C ABI's moe_<enum>_name() and
/// moe_<enum>_from_name(), and so of the command line and the bindings.
public protocol NamedCase: CaseIterable, RawRepresentable, Sendable where RawValue == Int32 {
  var caseName: String { get }
}

extension NamedCase {
  /// The case called `name`, ignoring ASCII case and reading '_' as '-'.
  public init?(caseName name: String) {
    let key = normalizedCaseName(name)
    guard let c = Self.allCases.first(where: { normalizedCaseName($0.caseName) == key }) else { return nil }
    self = c
  }

  /// Every canonical name, in raw-value order.
  public static var caseNames: [String] { allCases.sorted { $0.rawValue < $1.rawValue }.map(\.caseName) }
}

/// `name` lower-cased (ASCII) with '_' read as '-'.
public func normalizedCaseName(_ name: String) -> String {
  String(decoding: name.utf8.map { b -> UInt8 in
    if b == UInt8(ascii: "_") { return UInt8(ascii: "-") }
    if b >= 0x41 && b <= 0x5A { return b + 0x20 }
    return b
  }, as: UTF8.self)
}

// MARK: - The names

extension DType: NamedCase {
  public var caseName: String { name.lowercased() }
}
