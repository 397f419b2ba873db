#if canImport(Glibc)
import Glibc
#endif

/// printf-style formatting of numbers for reports ("%.4f", "%.3g", ...).
public func cFormat(_ format: String, _ args: CVarArg...) -> String {
  withVaList(args) { list in
    var buffer = [CChar](repeating: 0, count: 512)
    let n = vsnprintf(&buffer, buffer.count, format, list)
    if n >= buffer.count {
      buffer = [CChar](repeating: 0, count: Int(n) + 1)
      _ = withVaList(args) { vsnprintf(&buffer, buffer.count, format, $0) }
    }
    return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
  }
}

extension Character {
  /// '0' to '9'.
  package var isASCIIDigit: Bool { isASCII && isNumber }
}
