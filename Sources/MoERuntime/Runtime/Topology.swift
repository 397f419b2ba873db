import MoESupport
#if canImport(Glibc)
import Glibc
#endif
import CHwloc

// The machine as hwloc sees it, reduced to what the runtime plans with: NUMA nodes,
// the cores on each node, the PUs (hardware threads) of each core, and whether
// thread pinning and NUMA-bound allocation really take effect on it.
//
// Thread safety: a `Topology` is immutable after `init`. hwloc allows concurrent
// queries and binding calls on one loaded topology, so `pinCurrentThread` and the
// allocation functions may be called from several threads at once.

/// Where the topology description comes from.
public enum TopologySource: Sendable, Equatable {
  /// The machine this process runs on (hwloc still honours `HWLOC_SYNTHETIC` and
  /// `HWLOC_XMLFILE` from the environment; the result then is not "this system").
  case system
  /// An hwloc synthetic description, e.g. `"pack:2 [numa] l3:1 core:4 pu:1"`.
  case synthetic(String)
  /// An hwloc XML export (`lstopo foo.xml`).
  case xml(path: String)
}

/// One core: its logical index (hwloc order across the machine), its OS index, and the
/// OS indices of its PUs (hardware threads), ascending.
public struct TopologyCore: Sendable, Equatable {
  public let logicalIndex: Int
  /// -1 when hwloc does not know it.
  public let osIndex: Int
  public let puOSIndices: [Int]

  public init(logicalIndex: Int, osIndex: Int, puOSIndices: [Int]) {
    self.logicalIndex = logicalIndex
    self.osIndex = osIndex
    self.puOSIndices = puOSIndices
  }
}

/// One NUMA node and the cores that belong to it (empty for a memory-only node).
public struct TopologyNode: Sendable, Equatable {
  public let logicalIndex: Int
  /// -1 when hwloc does not know it.
  public let osIndex: Int
  /// Local memory of the node; 0 when unknown (synthetic topologies).
  public let memoryBytes: UInt64
  public let cores: [TopologyCore]

  public init(logicalIndex: Int, osIndex: Int, memoryBytes: UInt64, cores: [TopologyCore]) {
    self.logicalIndex = logicalIndex
    self.osIndex = osIndex
    self.memoryBytes = memoryBytes
    self.cores = cores
  }
}

/// Which binding operations hwloc supports for this topology. hwloc reports success
/// for binding calls on topologies that are not this system (synthetic, XML) without
/// doing anything, so effectiveness is judged from these flags, not from return codes.
public struct BindingSupport: Sendable, Equatable {
  /// hwloc_topology_is_thissystem: the topology describes the machine we run on.
  public let isThisSystem: Bool
  /// cpubind->set_thread_cpubind and cpubind->set_thisthread_cpubind.
  public let threadCPUBind: Bool
  /// membind->set_area_membind.
  public let areaMemBind: Bool
  /// membind->alloc_membind.
  public let allocMemBind: Bool
  /// membind->bind_membind (the HWLOC_MEMBIND_BIND policy).
  public let bindMemPolicy: Bool
  /// membind->interleave_membind (the HWLOC_MEMBIND_INTERLEAVE policy).
  public let interleaveMemPolicy: Bool

  public init(isThisSystem: Bool, threadCPUBind: Bool, areaMemBind: Bool,
              allocMemBind: Bool, bindMemPolicy: Bool, interleaveMemPolicy: Bool) {
    self.isThisSystem = isThisSystem
    self.threadCPUBind = threadCPUBind
    self.areaMemBind = areaMemBind
    self.allocMemBind = allocMemBind
    self.bindMemPolicy = bindMemPolicy
    self.interleaveMemPolicy = interleaveMemPolicy
  }

  /// Pinning a thread to a PU really takes effect.
  public var canPinThreads: Bool { isThisSystem && threadCPUBind }
  /// Allocating memory bound to one node really takes effect.
  public var canBindMemory: Bool { isThisSystem && (areaMemBind || allocMemBind) && bindMemPolicy }
  /// Allocating memory interleaved across nodes really takes effect.
  public var canInterleaveMemory: Bool {
    isThisSystem && (areaMemBind || allocMemBind) && interleaveMemPolicy
  }
}

/// A loaded hwloc topology. Keeps the hwloc handle alive (memory allocated through it
/// keeps the topology alive in turn) and destroys it in `deinit`.
public final class Topology: @unchecked Sendable {
  public let source: TopologySource
  /// NUMA nodes in logical order. Every core belongs to exactly one node: the first
  /// node, in logical order, whose cpuset contains the core's first PU. A topology
  /// without NUMA objects is one node holding all cores.
  public let nodes: [TopologyNode]
  public let support: BindingSupport
  /// The first Package's "CPUModel" info attribute; "" when there is none.
  public let cpuModel: String

  /// All cores of all nodes.
  public var coreCount: Int { nodes.reduce(0) { $0 + $1.cores.count } }
  /// All PUs (hardware threads) of all cores.
  public var puCount: Int {
    nodes.reduce(0) { sum, node in node.cores.reduce(sum) { $0 + $1.puOSIndices.count } }
  }

  private let handle: hwloc_topology_t
  /// False when hwloc reported no NUMA object and `nodes` is the single stand-in node:
  /// there is then no nodeset to bind memory to.
  private let hasNUMAObjects: Bool

  public init(source: TopologySource = .system) throws {
    var created: hwloc_topology_t?
    guard hwloc_topology_init(&created) == 0, let topology = created else {
      let reason = errnoText()
      throw MoEError(.outOfMemory, "hwloc_topology_init failed: \(reason)")
    }
    // Destroy the handle on every failure path; ownership passes to `self` at the end.
    var owned = false
    defer { if !owned { hwloc_topology_destroy(topology) } }

    switch source {
    case .system:
      // hwloc reads a synthetic description from the environment too.
      if let p = getenv("HWLOC_SYNTHETIC") {
        try Topology.checkSyntheticSize(String(cString: p), what: "HWLOC_SYNTHETIC")
      }
    case .synthetic(let description):
      try Topology.checkSyntheticSize(description, what: "synthetic topology")
      guard hwloc_topology_set_synthetic(topology, description) == 0 else {
        let reason = errnoText()
        throw MoEError.invalid(
          "invalid synthetic topology '\(description)': hwloc rejected it (\(reason)); "
          + "expected e.g. \"pack:2 [numa] core:4 pu:1\" (HWLOC_SYNTHETIC_VERBOSE=1 says why)")
      }
    case .xml(let path):
      // hwloc parses the file here. It reports ENOENT for a missing file and EINVAL for
      // text it cannot parse (HWLOC_XML_VERBOSE=1 makes it print why).
      guard hwloc_topology_set_xml(topology, path) == 0 else {
        let code = errno
        switch code {
        case ENOENT:
          throw MoEError.notFound("hwloc XML topology '\(path)' does not exist")
        case EINVAL:
          throw MoEError.format("'\(path)' is not a valid hwloc XML topology (set HWLOC_XML_VERBOSE=1 for details)")
        default:
          throw MoEError.io("cannot read hwloc XML topology '\(path)': \(String(cString: strerror(code)))")
        }
      }
    }
    guard hwloc_topology_load(topology) == 0 else {
      let reason = errnoText()
      let what: String
      switch source {
      case .system: what = "the system topology"
      case .synthetic(let description): what = "synthetic topology '\(description)'"
      case .xml(let path): what = "XML topology '\(path)'"
      }
      throw MoEError.io("hwloc could not load \(what): \(reason)")
    }

    let reading = TopologyReader(topology)
    self.source = source
    self.nodes = reading.nodes
    self.hasNUMAObjects = reading.hasNUMAObjects
    self.support = reading.support
    self.cpuModel = reading.cpuModel
    self.handle = topology
    owned = true
  }

  deinit {
    hwloc_topology_destroy(handle)
  }

  // MARK: - Synthetic descriptions

  /// Most PUs a synthetic description may describe. hwloc gives every object
  /// a cpuset as wide as the machine, so its time and memory grow with the
  /// square of the PU count ("pack:300 core:100 pu:1", 30000 PUs, takes half
  /// a minute and 450 MB); 4096 is also the most workers a runtime runs.
  public static let maxSyntheticPUs = 4096

  /// Checks the size of a synthetic description before hwloc builds it: the
  /// product of its level counts (the number of PUs) is at most
  /// `maxSyntheticPUs`. Levels are `TYPE:COUNT` or `COUNT`, with optional
  /// `(attributes)`; `[memory]` children (e.g. `[numa]`) add no PUs. The rest
  /// of the syntax is left to hwloc.
  package static func checkSyntheticSize(_ description: String, what: String) throws {
    var levels: [String] = []
    var current = "", depth = 0
    for c in description {
      if c == "(" || c == "[" { depth += 1 }
      if c == ")" || c == "]" { depth = max(0, depth - 1) }
      if depth == 0 && (c == " " || c == "\t" || c == "\n") {
        if !current.isEmpty { levels.append(current) }
        current = ""
      } else {
        current.append(c)
      }
    }
    if !current.isEmpty { levels.append(current) }
    var pus = 1
    for level in levels where !level.hasPrefix("[") {
      let head = level.prefix { $0 != "(" }
      let countText = head.split(separator: ":", omittingEmptySubsequences: false).last ?? ""
      guard !countText.isEmpty, countText.allSatisfy(\.isASCIIDigit) else {
        throw MoEError.invalid("\(what) '\(description)': level '\(level)' is not TYPE:COUNT (expected e.g. \"pack:2 [numa] core:4 pu:1\")")
      }
      let (product, overflow) = pus.multipliedReportingOverflow(by: Int(countText) ?? Int.max)
      pus = overflow ? Int.max : product
    }
    guard pus <= maxSyntheticPUs else {
      throw MoEError.invalid("\(what) '\(description)' describes \(pus == Int.max ? "too many" : String(pus)) PUs (the product of its level counts); at most \(maxSyntheticPUs) are allowed: hwloc's time and memory grow with the square of the PU count")
    }
  }

  // MARK: - Thread binding

  /// Pins the calling thread to one PU (OS index). Returns true only when the pin
  /// really happened: `support.canPinThreads` and hwloc returned 0.
  public func pinCurrentThread(puOSIndex: Int) -> Bool {
    guard support.canPinThreads, puOSIndex >= 0, puOSIndex < Int(Int32.max),
          let cpuset = hwloc_bitmap_alloc() else { return false }
    defer { hwloc_bitmap_free(cpuset) }
    guard hwloc_bitmap_only(cpuset, UInt32(puOSIndex)) == 0 else { return false }
    return hwloc_set_cpubind(handle, cpuset, Int32(HWLOC_CPUBIND_THREAD.rawValue)) == 0
  }

  // MARK: - Memory

  /// Allocates `bytes` (page aligned, contents undefined) bound to NUMA node `node`
  /// (logical index) when `support.canBindMemory`; otherwise, or when `node` is nil,
  /// or when the strict bound allocation fails, a plain page-aligned allocation.
  /// `NodeMemory.bound` says which happened.
  public func allocate(bytes: Int, node: Int?) throws -> NodeMemory {
    guard bytes >= 0 else { throw MoEError.invalid("allocate: negative size \(bytes)") }
    if let node {
      guard nodes.indices.contains(node) else {
        throw MoEError.invalid("allocate: NUMA node \(node) out of range (topology has \(nodes.count))")
      }
      let osIndex = nodes[node].osIndex
      if support.canBindMemory && hasNUMAObjects && osIndex >= 0,
         let memory = boundAllocation(bytes: bytes, nodeOSIndices: [osIndex],
                                      policy: HWLOC_MEMBIND_BIND, node: node) {
        return memory
      }
    }
    return try NodeMemory(plainBytes: bytes, node: node)
  }

  /// Allocates `bytes` (page aligned, contents undefined) with pages interleaved across
  /// all NUMA nodes when supported; otherwise a plain page-aligned allocation.
  public func allocateInterleaved(bytes: Int) throws -> NodeMemory {
    guard bytes >= 0 else { throw MoEError.invalid("allocateInterleaved: negative size \(bytes)") }
    let osIndices = nodes.map(\.osIndex)
    if support.canInterleaveMemory && hasNUMAObjects && !osIndices.contains(where: { $0 < 0 }),
       let memory = boundAllocation(bytes: bytes, nodeOSIndices: osIndices,
                                    policy: HWLOC_MEMBIND_INTERLEAVE, node: nil) {
      return memory
    }
    return try NodeMemory(plainBytes: bytes, node: nil)
  }

  /// hwloc_alloc_membind with STRICT, so a nil result means "not bound" rather than a
  /// silent fallback; the caller then falls back to a plain allocation.
  private func boundAllocation(bytes: Int, nodeOSIndices: [Int], policy: hwloc_membind_policy_t,
                               node: Int?) -> NodeMemory? {
    guard let nodeset = hwloc_bitmap_alloc() else { return nil }
    defer { hwloc_bitmap_free(nodeset) }
    for index in nodeOSIndices {
      guard hwloc_bitmap_set(nodeset, UInt32(index)) == 0 else { return nil }
    }
    let length = max(bytes, 1)
    let flags = Int32(HWLOC_MEMBIND_BYNODESET.rawValue | HWLOC_MEMBIND_STRICT.rawValue)
    guard let pointer = hwloc_alloc_membind(handle, length, nodeset, policy, flags) else { return nil }
    if length >= hugeAllocationBytes { adviseHugePages(pointer, length) }
    return NodeMemory(boundPointer: pointer, bytes: bytes, length: length, node: node, topology: self)
  }

  /// Returns memory obtained from `hwloc_alloc_membind`.
  fileprivate func free(bound pointer: UnsafeMutableRawPointer, length: Int) {
    hwloc_free(handle, pointer, length)
  }
}

/// A page-aligned block of memory, optionally bound to a NUMA node. Freed in `deinit`
/// with the matching deallocation; a bound block keeps its `Topology` alive.
public final class NodeMemory: @unchecked Sendable {
  public let pointer: UnsafeMutableRawPointer
  /// The size asked for (a request for 0 bytes still gets a valid one-page block).
  public let bytes: Int
  /// The logical node asked for; nil for no binding or interleaved memory.
  public let node: Int?
  /// The memory policy really applies (bound to `node`, or interleaved when `node` is nil).
  public let bound: Bool

  private let length: Int
  /// Set for hwloc allocations (freed with hwloc_free); nil for posix_memalign ones.
  private let topology: Topology?

  fileprivate init(boundPointer: UnsafeMutableRawPointer, bytes: Int, length: Int, node: Int?,
                   topology: Topology) {
    self.pointer = boundPointer
    self.bytes = bytes
    self.length = length
    self.node = node
    self.bound = true
    self.topology = topology
  }

  fileprivate init(plainBytes bytes: Int, node: Int?) throws {
    let (block, length, rc) = allocateBlock(bytes: max(bytes, 1), alignment: max(4096, Int(getpagesize())))
    guard let allocated = block else {
      throw MoEError(.outOfMemory, "cannot allocate \(bytes) bytes: \(String(cString: strerror(rc)))")
    }
    self.pointer = allocated
    self.bytes = bytes
    self.length = length
    self.node = node
    self.bound = false
    self.topology = nil
  }

  deinit {
    if let topology {
      topology.free(bound: pointer, length: length)
    } else {
      Glibc.free(pointer)
    }
  }
}

// MARK: - Reading the hwloc object tree

/// Walks a loaded hwloc topology once and extracts nodes, cores and support flags.
private struct TopologyReader {
  package var nodes: [TopologyNode] = []
  var hasNUMAObjects = false
  package var support: BindingSupport
  package var cpuModel = ""

  init(_ topology: hwloc_topology_t) {
    support = Self.readSupport(topology)
    if let package = hwloc_get_obj_by_type(topology, HWLOC_OBJ_PACKAGE, 0),
       let model = hwloc_obj_get_info_by_name(package, "CPUModel") {
      cpuModel = String(cString: model)
    }

    let cores = Self.readCores(topology)

    // NUMA nodes live at a virtual (negative) depth in hwloc 2.
    var numaObjects: [hwloc_obj_t] = []
    let numaDepth = hwloc_get_type_depth(topology, HWLOC_OBJ_NUMANODE)
    if numaDepth != HWLOC_TYPE_DEPTH_UNKNOWN.rawValue && numaDepth != HWLOC_TYPE_DEPTH_MULTIPLE.rawValue {
      let count = hwloc_get_nbobjs_by_depth(topology, numaDepth)
      for index in 0..<count {
        if let object = hwloc_get_obj_by_depth(topology, numaDepth, index) { numaObjects.append(object) }
      }
    }

    guard !numaObjects.isEmpty else {
      // No NUMA object: one stand-in node with all cores and the machine's memory.
      let root = hwloc_get_root_obj(topology)
      nodes = [TopologyNode(logicalIndex: 0, osIndex: 0, memoryBytes: root?.pointee.total_memory ?? 0,
                            cores: cores.map(\.core))]
      return
    }
    hasNUMAObjects = true

    // Assign each core to the first node whose cpuset holds the core's first PU; if none
    // does (not expected from hwloc 2), to the first node whose cpuset meets the core's,
    // and failing that to node 0, so that no core is lost.
    var coresPerNode = [[TopologyCore]](repeating: [], count: numaObjects.count)
    for (core, cpuset) in cores {
      let firstPU = hwloc_bitmap_first(cpuset)
      var owner = numaObjects.firstIndex {
        guard let nodeCPUs = $0.pointee.cpuset, firstPU >= 0 else { return false }
        return hwloc_bitmap_isset(nodeCPUs, UInt32(firstPU)) != 0
      }
      if owner == nil {
        owner = numaObjects.firstIndex {
          guard let nodeCPUs = $0.pointee.cpuset else { return false }
          return hwloc_bitmap_intersects(nodeCPUs, cpuset) != 0
        }
      }
      coresPerNode[owner ?? 0].append(core)
    }

    nodes = numaObjects.enumerated().map { position, object in
      TopologyNode(logicalIndex: position,
                   osIndex: Self.knownIndex(object.pointee.os_index),
                   memoryBytes: object.pointee.attr?.pointee.numanode.local_memory ?? 0,
                   cores: coresPerNode[position])
    }
  }

  /// Cores in logical order with their cpusets (valid while the topology lives). Without
  /// Core objects (some virtual machines, XML exports) each PU stands for a core.
  private static func readCores(_ topology: hwloc_topology_t) -> [(core: TopologyCore, cpuset: hwloc_const_cpuset_t)] {
    var type = HWLOC_OBJ_CORE
    if hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE) <= 0 { type = HWLOC_OBJ_PU }
    let count = max(0, hwloc_get_nbobjs_by_type(topology, type))
    var cores: [(core: TopologyCore, cpuset: hwloc_const_cpuset_t)] = []
    cores.reserveCapacity(Int(count))
    for index in 0..<count {
      guard let object = hwloc_get_obj_by_type(topology, type, UInt32(index)),
            let cpuset = object.pointee.cpuset else { continue }
      let core = TopologyCore(logicalIndex: cores.count,
                              osIndex: knownIndex(object.pointee.os_index),
                              puOSIndices: bits(of: cpuset))
      cores.append((core, cpuset))
    }
    return cores
  }

  private static func readSupport(_ topology: hwloc_topology_t) -> BindingSupport {
    let isThisSystem = hwloc_topology_is_thissystem(topology) != 0
    guard let support = hwloc_topology_get_support(topology)?.pointee else {
      return BindingSupport(isThisSystem: isThisSystem, threadCPUBind: false, areaMemBind: false,
                            allocMemBind: false, bindMemPolicy: false, interleaveMemPolicy: false)
    }
    let cpubind = support.cpubind?.pointee
    let membind = support.membind?.pointee
    return BindingSupport(
      isThisSystem: isThisSystem,
      threadCPUBind: (cpubind?.set_thread_cpubind ?? 0) != 0 && (cpubind?.set_thisthread_cpubind ?? 0) != 0,
      areaMemBind: (membind?.set_area_membind ?? 0) != 0,
      allocMemBind: (membind?.alloc_membind ?? 0) != 0,
      bindMemPolicy: (membind?.bind_membind ?? 0) != 0,
      interleaveMemPolicy: (membind?.interleave_membind ?? 0) != 0)
  }

  /// The set bits of a finite bitmap, ascending.
  private static func bits(of bitmap: hwloc_const_bitmap_t) -> [Int] {
    var result: [Int] = []
    var bit = hwloc_bitmap_first(bitmap)
    while bit >= 0 {
      result.append(Int(bit))
      bit = hwloc_bitmap_next(bitmap, bit)
    }
    return result
  }

  /// hwloc's unsigned OS index, with HWLOC_UNKNOWN_INDEX mapped to -1.
  private static func knownIndex(_ osIndex: UInt32) -> Int {
    osIndex == UInt32.max ? -1 : Int(osIndex)
  }
}
