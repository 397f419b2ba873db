#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle
import MoECore

/// Per-thread storage of the last error message (pthread key; the buffer is freed at thread exit).
enum LastError {
  static let key: pthread_key_t = {
    var k = pthread_key_t()
    pthread_key_create(&k) { free($0) }
    return k
  }()

  static func set(_ message: String) {
    let old = pthread_getspecific(key)
    let copy = strdup(message)
    pthread_setspecific(key, copy)
    free(old)
  }

  static func get() -> UnsafePointer<CChar> {
    if let p = pthread_getspecific(key) { return UnsafePointer(p.assumingMemoryBound(to: CChar.self)) }
    return staticText("")
  }
}

func staticText(_ s: StaticString) -> UnsafePointer<CChar> {
  UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
}

func status(_ kind: MoEErrorKind) -> moe_status {
  moe_status(rawValue: kind.rawValue)
}

/// Runs `body`, mapping every thrown error to a status and a thread-local message.
func guarded(_ function: StaticString, _ body: () throws -> Void) -> moe_status {
  do {
    try body()
    return MOE_OK
  } catch let e as MoEError {
    LastError.set("\(function): \(e.message)")
    return status(e.kind)
  } catch {
    LastError.set("\(function): \(error)")
    return MOE_ERR_INTERNAL
  }
}

/// A C string argument as a Swift string; NULL or invalid UTF-8 is an error naming the argument.
func stringArgument(_ p: UnsafePointer<CChar>?, _ name: String) throws -> String {
  guard let p else { throw MoEError(.nullPointer, "\(name) is NULL") }
  guard let s = String(validatingCString: p) else { throw MoEError.invalid("\(name) is not valid UTF-8") }
  guard !s.isEmpty else { throw MoEError.invalid("\(name) is empty") }
  return s
}

/// Copies `s` into a fixed char array field of a C struct (truncating, NUL-terminated).
func copyText<T>(_ s: String, into field: inout T) {
  withUnsafeMutableBytes(of: &field) { buf in
    let bytes = Array(s.utf8.prefix(buf.count - 1))
    for (i, b) in bytes.enumerated() { buf[i] = b }
    buf[bytes.count] = 0
  }
}
