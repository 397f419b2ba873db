/// Error kinds of the core; each maps to one frozen `moe_status` code in the ABI.
public enum MoEErrorKind: Int32, Sendable {
  case invalidArgument = -1
  case nullPointer = -2
  case io = -3
  case format = -4
  case unsupported = -5
  case exists = -6
  case notFound = -7
  case shape = -8
  case outOfMemory = -9
  case cancelled = -10
  case bufferTooSmall = -11
  case `internal` = -12
  /// A NaN or infinity where a finite number is needed (loss, gradient, weight, logits).
  case nonFinite = -13
}

/// The one error type thrown by the core: a kind and a message that says what
/// was wrong with which argument or file.
public struct MoEError: Error, CustomStringConvertible, Sendable {
  public var kind: MoEErrorKind
  public var message: String

  public init(_ kind: MoEErrorKind, _ message: String) {
    self.kind = kind
    self.message = message
  }

  public var description: String { message }

  public static func invalid(_ m: String) -> MoEError { MoEError(.invalidArgument, m) }
  public static func format(_ m: String) -> MoEError { MoEError(.format, m) }
  public static func io(_ m: String) -> MoEError { MoEError(.io, m) }
  public static func unsupported(_ m: String) -> MoEError { MoEError(.unsupported, m) }
  public static func notFound(_ m: String) -> MoEError { MoEError(.notFound, m) }
  public static func shape(_ m: String) -> MoEError { MoEError(.shape, m) }
  public static func nonFinite(_ m: String) -> MoEError { MoEError(.nonFinite, m) }
}

/// Multiplies sizes, throwing instead of trapping on overflow.
@inlinable
public func checkedProduct(_ values: [Int], what: String) throws -> Int {
  var result = 1
  for v in values {
    guard v >= 0 else { throw MoEError.format("\(what): negative dimension \(v)") }
    let (p, overflow) = result.multipliedReportingOverflow(by: v)
    guard !overflow else { throw MoEError(.outOfMemory, "\(what): size overflows (dimensions \(values))") }
    result = p
  }
  return result
}
