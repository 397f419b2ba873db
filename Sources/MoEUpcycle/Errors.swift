import MoESupport
#if canImport(Glibc)
import Glibc
#endif
import CMoECPU
import CMoeUpcycle

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

/// Why this CPU cannot run the core, or nil. The core is compiled for x86-64-v3
/// (Package.swift); this layer is not, so it can refuse instead of faulting.
let cpuBelowBaseline: String? = {
  #if CORE_NEEDS_X86_64_V3
  let need = MOE_CPU_AVX2.rawValue | MOE_CPU_FMA.rawValue | MOE_CPU_F16C.rawValue
  if moe_cpu_features() & need != need {
    return "this CPU (or its OS) lacks AVX2, FMA or F16C (x86-64-v3), which this build of the library needs;"
      + " build it for this machine with MOEUPCYCLE_TARGET_CPU=native"
  }
  #endif
  return nil
}()

/// Runs `body`, mapping every thrown error to a status and a thread-local message.
func guarded(_ function: StaticString, _ body: () throws -> Void) -> moe_status {
  if let reason = cpuBelowBaseline {
    LastError.set("\(function): \(reason)")
    return MOE_ERR_UNSUPPORTED
  }
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
