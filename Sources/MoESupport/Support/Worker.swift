#if canImport(Glibc)
import Glibc
#endif

/// A counting semaphore over POSIX sem_t.
package final class CountingSemaphore: @unchecked Sendable {
  private var sem = sem_t()
  package init(_ value: UInt32) { sem_init(&sem, 0, value) }
  deinit { sem_destroy(&sem) }
  package func wait() { while sem_wait(&sem) != 0 && errno == EINTR {} }
  package func signal() { sem_post(&sem) }
}

/// One background thread running a closure; `join` waits for it.
package final class BackgroundThread: @unchecked Sendable {
  private var thread = pthread_t()
  private let body: () -> Void
  private var started = false

  package init(_ body: @escaping () -> Void) {
    self.body = body
  }

  /// Starts the thread; returns false if the system refused (the caller then runs inline).
  package func start() -> Bool {
    let box = Unmanaged.passRetained(self).toOpaque()
    let rc = pthread_create(&thread, nil, { arg in
      let me = Unmanaged<BackgroundThread>.fromOpaque(arg!).takeRetainedValue()
      me.body()
      return nil
    }, box)
    if rc != 0 {
      Unmanaged<BackgroundThread>.fromOpaque(box).release()
      return false
    }
    started = true
    return true
  }

  package func join() {
    if started { pthread_join(thread, nil); started = false }
  }
}
