import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import VLMMedia

/// Where request images may come from besides data: URIs. Everything is off by default: a server that fetches
/// URLs for anyone who can reach it can be made to probe the network it sits in (SSRF), and one that reads
/// files can be made to read any file.
public struct ImageSourcePolicy: Sendable {
    /// http(s) image URLs are fetched (`--allow-remote-images`).
    public var allowRemote = false
    /// Remote URLs may name loopback, private, link-local and other non-public addresses (`--allow-private-urls`).
    public var allowPrivateAddresses = false
    /// file: URLs (or absolute paths) are read when they lie under this folder (`--allow-file-root`).
    public var fileRoot: URL?
    /// Largest image file, fetched or read.
    public var maxBytes = 20_000_000
    /// Longest a fetch may take, from connecting to the last byte.
    public var fetchTimeoutSeconds = 10.0

    public init() {}
}

/// Checks that a host name resolves only to public addresses.
enum AddressPolicy {
    /// The host's addresses (getaddrinfo), each as text, and whether every one is public.
    static func resolve(_ host: String) throws -> [(text: String, isPublic: Bool)] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &list)
        guard rc == 0, let first = list else {
            throw APIError("the image URL's host '\(host)' does not resolve", code: "invalid_image_url")
        }
        defer { freeaddrinfo(first) }
        var out: [(String, Bool)] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            if let sa = ai.pointee.ai_addr {
                if ai.pointee.ai_family == AF_INET {
                    let a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                    let bytes = withUnsafeBytes(of: a.s_addr) { Array($0) }  // network order
                    out.append((bytes.map(String.init).joined(separator: "."), isPublicIPv4(bytes)))
                } else if ai.pointee.ai_family == AF_INET6 {
                    let a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                    let bytes = withUnsafeBytes(of: a) { Array($0) }
                    out.append((ipv6Text(bytes), isPublicIPv6(bytes)))
                }
            }
            p = ai.pointee.ai_next
        }
        return out
    }

    /// Not: this network (0/8), private (10/8, 172.16/12, 192.168/16), carrier NAT (100.64/10), loopback (127/8),
    /// link-local (169.254/16, cloud metadata), IETF/benchmark/test ranges, multicast and reserved (224/3).
    static func isPublicIPv4(_ b: [UInt8]) -> Bool {
        guard b.count == 4 else { return false }
        switch (b[0], b[1], b[2]) {
        case (0, _, _), (10, _, _), (127, _, _): return false
        case (100, 64...127, _): return false
        case (169, 254, _): return false
        case (172, 16...31, _): return false
        case (192, 168, _), (192, 0, 0), (192, 0, 2): return false
        case (198, 18...19, _), (198, 51, 100), (203, 0, 113): return false
        default: return b[0] < 224
        }
    }

    /// Not: unspecified, loopback, unique-local (fc00::/7), link-local (fe80::/10), multicast (ff00::/8),
    /// documentation (2001:db8::/32); IPv4-mapped and NAT64 addresses are judged by their IPv4 part.
    static func isPublicIPv6(_ b: [UInt8]) -> Bool {
        guard b.count == 16 else { return false }
        if b[0..<15].allSatisfy({ $0 == 0 }) { return false }                       // :: and ::1
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff { return isPublicIPv4(Array(b[12..<16])) }
        if b[0] == 0x00, b[1] == 0x64, b[2] == 0xff, b[3] == 0x9b { return isPublicIPv4(Array(b[12..<16])) }  // 64:ff9b::/96
        if b[0] & 0xfe == 0xfc { return false }
        if b[0] == 0xfe && b[1] & 0xc0 == 0x80 { return false }
        if b[0] == 0xff { return false }
        if b[0] == 0x20, b[1] == 0x01, b[2] == 0x0d, b[3] == 0xb8 { return false }
        return true
    }

    static func ipv6Text(_ b: [UInt8]) -> String {
        stride(from: 0, to: 16, by: 2).map { String(UInt16(b[$0]) << 8 | UInt16(b[$0 + 1]), radix: 16) }.joined(separator: ":")
    }

    /// Throws unless every address of `url`'s host is public (or private ones are allowed).
    static func check(_ url: URL, policy: ImageSourcePolicy, param: String) throws {
        guard let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https" else {
            throw APIError("image URLs must be http(s) or data: URIs", param: param, code: "invalid_image_url")
        }
        guard var host = url.host, !host.isEmpty else { throw APIError("the image URL has no host", param: param, code: "invalid_image_url") }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if policy.allowPrivateAddresses { return }
        let addresses: [(text: String, isPublic: Bool)]
        do { addresses = try resolve(host) } catch var e as APIError { e.param = param; throw e }
        if let bad = addresses.first(where: { !$0.isPublic }) {
            throw APIError("the image URL's host '\(host)' is a loopback, private or link-local address (\(bad.text)); "
                           + "the server refuses those unless started with --allow-private-urls",
                           param: param, code: "image_url_not_allowed")
        }
    }
}

/// Fetches one remote image within the policy's size and time limits; redirects are followed only to URLs that
/// pass the same address check.
final class RemoteImageFetcher: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    private let policy: ImageSourcePolicy
    private let param: String
    private let lock = NSLock()
    private var data = Data()
    private var failure: APIError?
    private var continuation: CheckedContinuation<Data, Error>?

    private init(policy: ImageSourcePolicy, param: String) {
        self.policy = policy
        self.param = param
    }

    static func fetch(_ url: URL, policy: ImageSourcePolicy, param: String) async throws -> Data {
        try AddressPolicy.check(url, policy: policy, param: param)
        let fetcher = RemoteImageFetcher(policy: policy, param: param)
        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = policy.fetchTimeoutSeconds
        configuration.timeoutIntervalForResource = policy.fetchTimeoutSeconds
        configuration.httpShouldSetCookies = false
        let session = URLSession(configuration: configuration, delegate: fetcher, delegateQueue: nil)
        defer { session.finishTasksAndInvalidate() }
        var request = URLRequest(url: url, timeoutInterval: policy.fetchTimeoutSeconds)
        request.setValue("swift-vlm", forHTTPHeaderField: "User-Agent")
        return try await withCheckedThrowingContinuation { c in
            fetcher.continuation = c
            session.dataTask(with: request).resume()
        }
    }

    private func fail(_ e: APIError, task: URLSessionTask) {
        lock.lock()
        if failure == nil { failure = e }
        lock.unlock()
        task.cancel()
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                    completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
        if let http = response as? HTTPURLResponse, !(200..<300).contains(http.statusCode) {
            fail(APIError("fetching the image failed: HTTP \(http.statusCode)", param: param, code: "image_fetch_failed"), task: dataTask)
            completionHandler(.cancel)
            return
        }
        if response.expectedContentLength > Int64(policy.maxBytes) {
            fail(tooLarge(), task: dataTask)
            completionHandler(.cancel)
            return
        }
        completionHandler(.allow)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive chunk: Data) {
        lock.lock()
        data.append(chunk)
        let over = data.count > policy.maxBytes
        lock.unlock()
        if over { fail(tooLarge(), task: dataTask) }
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                    newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
        do {
            guard let url = request.url else { throw APIError("the image URL redirects nowhere", param: param, code: "image_fetch_failed") }
            try AddressPolicy.check(url, policy: policy, param: param)
            completionHandler(request)
        } catch {
            fail((error as? APIError) ?? APIError("\(error)", param: param, code: "image_fetch_failed"), task: task)
            completionHandler(nil)
        }
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
        lock.lock()
        let c = continuation
        continuation = nil
        let failure = self.failure, data = self.data
        lock.unlock()
        if let failure { c?.resume(throwing: failure) }
        else if let error {
            let timedOut = (error as? URLError)?.code == .timedOut
            c?.resume(throwing: APIError(timedOut ? "fetching the image took longer than \(policy.fetchTimeoutSeconds) s"
                                                  : "fetching the image failed: \(error.localizedDescription)",
                                         param: param, code: timedOut ? "image_fetch_timeout" : "image_fetch_failed"))
        } else {
            c?.resume(returning: data)
        }
    }

    private func tooLarge() -> APIError {
        APIError("the image at the URL is over the \(policy.maxBytes)-byte limit", param: param, code: "image_too_large")
    }
}

/// Reads a file: URL or absolute path that must lie under the policy's file root (symbolic links resolved
/// first, so a link cannot lead outside it).
enum LocalImageReader {
    static func read(_ reference: String, policy: ImageSourcePolicy, param: String) throws -> Data {
        guard let root = policy.fileRoot else {
            throw APIError("local image files are disabled; the server reads them only under --allow-file-root",
                           param: param, code: "file_images_disabled")
        }
        let path: String
        if reference.lowercased().hasPrefix("file://") {
            guard let url = URL(string: reference), url.isFileURL else {
                throw APIError("the file URL is not valid", param: param, code: "invalid_image_url")
            }
            path = url.path
        } else {
            path = reference
        }
        guard path.hasPrefix("/") else { throw APIError("image file paths must be absolute", param: param, code: "invalid_image_url") }
        let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().standardizedFileURL.path
        let rootPath = root.resolvingSymlinksInPath().standardizedFileURL.path
        let prefix = rootPath.hasSuffix("/") ? rootPath : rootPath + "/"
        guard resolved.hasPrefix(prefix) else {
            throw APIError("the image file is outside the allowed folder", param: param, code: "image_path_not_allowed")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: resolved, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw APIError("no image file at that path", param: param, code: "image_not_found")
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: resolved)[.size] as? Int) ?? nil
        guard let size, size <= policy.maxBytes else {
            throw APIError("the image file is over the \(policy.maxBytes)-byte limit", param: param, code: "image_too_large")
        }
        guard let data = FileManager.default.contents(atPath: resolved) else {
            throw APIError("the image file cannot be read", param: param, code: "image_not_found")
        }
        return data
    }
}
