"""python-etcd3 (PyPI `etcd3`) against a 3-member mutual-TLS cluster with auth.

Driven by e2e/tests/tls.rs, which starts the members (ferrokv, or etcd with
FERROKV_E2E_SERVER=/usr/bin/etcd) and runs one phase per call:

  setup          root, auth enable, alice and her roles (through the first member)
  check          put/get/watch/lease/txn through every member, every refusal, every rule
  after-restart  the same users, roles and rules after a restart of every member

Each phase prints what it checked and exits non-zero at the first surprise.
"""

import argparse
import queue
import sys
import time

import grpc
import etcd3
from etcd3 import etcdrpc
from etcd3.etcdrpc import auth_pb2

READ, WRITE, READWRITE = 0, 1, 2
ROOT = ("root", "rootpw")
ALICE = ("alice", "alicepw")
TIMEOUT = 30
# Whether the server is etcd 3.4 (--etcd-3.4), for the two places it differs from later etcd.
ETCD_34 = False


def fail(message):
    print("FAILED: " + message, file=sys.stderr)
    sys.exit(1)


def prefix_end(prefix):
    """The range end of a prefix, as etcd computes it."""
    data = bytearray(prefix.encode())
    data[-1] += 1
    return bytes(data)


class Cluster:
    def __init__(self, args):
        self.endpoints = args.endpoints.split(",")
        self.ca, self.cert, self.key = args.ca, args.cert, args.key

    def client(self, endpoint, user=None, client_cert=True):
        host, port = endpoint.rsplit(":", 1)
        credentials = {}
        if client_cert:
            credentials = {"cert_cert": self.cert, "cert_key": self.key}
        login = {}
        if user:
            login = {"user": user[0], "password": user[1]}
        return etcd3.client(host=host, port=int(port), ca_cert=self.ca,
                            timeout=TIMEOUT, **credentials, **login)


def auth_stub(client):
    return etcdrpc.AuthStub(client.channel)


def auth_call(client, method, request):
    return getattr(auth_stub(client), method)(request, TIMEOUT, metadata=client.metadata)


def refused(what, call, code, message):
    """Runs `call`, which must fail with gRPC status `code` and `message`."""
    try:
        call()
    except grpc.RpcError as err:
        if err.code() != code or err.details() != message:
            fail("%s: expected %s %r, got %s %r" % (what, code, message, err.code(), err.details()))
        return
    except etcd3.exceptions.Etcd3Exception as err:
        fail("%s: expected %s %r, got %r" % (what, code, message, err))
    fail("%s: was allowed" % what)


def denied(what, call):
    refused(what, call, grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")


def setup(cluster):
    root = cluster.client(cluster.endpoints[0])
    auth_call(root, "UserAdd", etcdrpc.AuthUserAddRequest(name=ROOT[0], password=ROOT[1]))
    auth_call(root, "RoleAdd", etcdrpc.AuthRoleAddRequest(name="root"))
    auth_call(root, "UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user="root", role="root"))
    auth_call(root, "AuthEnable", etcdrpc.AuthEnableRequest())
    root = cluster.client(cluster.endpoints[0], ROOT)
    auth_call(root, "UserAdd", etcdrpc.AuthUserAddRequest(name=ALICE[0], password=ALICE[1]))
    grants = [
        # (role, permission, key, range_end): a prefix, a prefix, one key, a range.
        ("reader", READ, "app/", prefix_end("app/")),
        ("writer", READWRITE, "app/w/", prefix_end("app/w/")),
        ("solo", WRITE, "solo", b""),
        ("ranger", READ, "r/a", b"r/m"),
    ]
    for role, kind, key, range_end in grants:
        auth_call(root, "RoleAdd", etcdrpc.AuthRoleAddRequest(name=role))
        perm = auth_pb2.Permission(permType=kind, key=key.encode(), range_end=range_end)
        auth_call(root, "RoleGrantPermission",
                  etcdrpc.AuthRoleGrantPermissionRequest(name=role, perm=perm))
        auth_call(root, "UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user="alice", role=role))
    # The client certificate's CommonName names a user of its own (requests without a token,
    # the e2e fixture's health probe among them): it may read one key.
    auth_call(root, "UserAdd", etcdrpc.AuthUserAddRequest(name="client", password="clientpw"))
    auth_call(root, "RoleAdd", etcdrpc.AuthRoleAddRequest(name="health"))
    perm = auth_pb2.Permission(permType=READ, key=b"ferrokv-e2e/health", range_end=b"")
    auth_call(root, "RoleGrantPermission",
              etcdrpc.AuthRoleGrantPermissionRequest(name="health", perm=perm))
    auth_call(root, "UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user="client", role="health"))
    for key in ("app/x", "r/b", "r/z", "secret", "ferrokv-e2e/health"):
        root.put(key, "v")
    print("setup: root, auth enabled, alice with reader, writer, solo, ranger; "
          "the certificate's user")


def check_refusals(cluster, endpoint):
    refused("a wrong password", lambda: cluster.client(endpoint, ("alice", "wrong")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: authentication failed, invalid user ID or password")
    refused("an unknown user", lambda: cluster.client(endpoint, ("nobody", "pw")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: authentication failed, invalid user ID or password")
    # With --client-cert-auth, a request without a token is its certificate's CommonName's
    # ("client"), a user who may read only ferrokv-e2e/health.
    anonymous = cluster.client(endpoint)
    if anonymous.get("ferrokv-e2e/health")[0] != b"v":
        fail("the certificate's user cannot read its key")
    denied("a request without a token", lambda: anonymous.get("app/x"))
    # No client certificate: refused at the handshake.
    no_cert = cluster.client(endpoint, client_cert=False)
    try:
        no_cert.get("app/x")
    except etcd3.exceptions.ConnectionFailedError:
        pass
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            fail("a client without certificate: %s %r" % (err.code(), err.details()))
    else:
        fail("a client without certificate was served")


def check_kv_and_txn(alice, root, i):
    value, _ = alice.get("app/x")
    if value is None:
        fail("alice cannot read app/x")
    if len(list(alice.get_prefix("app/"))) < 1:
        fail("alice's prefix read is empty")
    denied("alice's put on read-only app/x", lambda: alice.put("app/x", "no"))
    alice.put("app/w/k%d" % i, "v%d" % i)
    if alice.get("app/w/k%d" % i)[0] != ("v%d" % i).encode():
        fail("alice does not read her own write")
    alice.put("solo", "s")
    denied("alice's read of write-only solo", lambda: alice.get("solo"))
    if alice.get("r/b")[0] != b"v":
        fail("alice cannot read r/b inside her range")
    denied("alice's read of r/z outside her range", lambda: alice.get("r/z"))
    list(alice.get_range("r/a", "r/m"))
    denied("alice's range read past her range", lambda: list(alice.get_range("r/a", "r/zz")))
    denied("alice's read of secret", lambda: alice.get("secret"))
    # Txn: every compare and every op of both branches needs its permission.
    t = alice.transactions
    ok, _ = alice.transaction(compare=[t.value("app/x") == "v"],
                              success=[t.put("app/w/t%d" % i, "t")],
                              failure=[t.get("app/x")])
    if not ok or root.get("app/w/t%d" % i)[0] != b"t":
        fail("alice's permitted txn did not apply")
    denied("a txn comparing secret", lambda: alice.transaction(
        compare=[t.value("secret") == "v"], success=[t.get("app/x")], failure=[]))
    denied("a txn whose failure branch writes app/x", lambda: alice.transaction(
        compare=[t.value("app/x") == "v"], success=[t.get("app/x")],
        failure=[t.put("app/x", "no")]))


def check_watch(alice, root, i):
    events = queue.Queue()
    watch_id = alice.add_watch_prefix_callback("app/w/", events.put)
    root.put("app/w/watched%d" % i, "w")
    deadline = time.time() + TIMEOUT
    while True:
        try:
            response = events.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            fail("alice's watch on app/w/ saw no event")
        if isinstance(response, Exception):
            fail("alice's watch failed: %r" % response)
        keys = [e.key for e in response.events]
        if ("app/w/watched%d" % i).encode() in keys:
            break
    alice.cancel_watch(watch_id)
    # A watch outside alice's ranges is refused: created and canceled at once.
    request = etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(key=b"secret"))
    stream = etcdrpc.WatchStub(alice.channel).Watch(iter([request]), TIMEOUT,
                                                     metadata=alice.metadata)
    first = next(stream)
    stream.cancel()
    if not first.canceled:
        fail("alice's watch on secret was not canceled: %r" % first)


def check_leases(alice, root, i):
    lease = alice.lease(60)
    alice.put("app/w/leased%d" % i, "l", lease=lease)
    info = alice.get_lease_info(lease.id)
    if ("app/w/leased%d" % i).encode() not in info.keys:
        fail("alice's lease does not list its key: %r" % info)
    lease.refresh()
    lease.revoke()
    if root.get("app/w/leased%d" % i)[0] is not None:
        fail("revoking alice's lease kept its key")
    # A lease holding a key alice may not write: she may neither revoke it nor read its keys.
    held = root.lease(60)
    root.put("secret", "held", lease=held)
    denied("alice revoking a lease on secret", lambda: alice.revoke_lease(held.id))
    if not ETCD_34:
        # etcd 3.4 lets anyone read a lease's keys; later etcd, and ferrokv, check them.
        denied("alice reading the keys of a lease on secret",
               lambda: alice.get_lease_info(held.id))
    root.revoke_lease(held.id)
    root.put("secret", "v")


def check_admin(alice, root):
    if ETCD_34:
        # etcd 3.4 passes its auth store's error through untranslated on Maintenance calls.
        refused("alice defragmenting", lambda: alice.defragment(),
                grpc.StatusCode.UNKNOWN, "auth: permission denied")
    else:
        denied("alice defragmenting", lambda: alice.defragment())
    denied("alice listing users",
           lambda: auth_call(alice, "UserList", etcdrpc.AuthUserListRequest()))
    denied("alice adding a user",
           lambda: auth_call(alice, "UserAdd", etcdrpc.AuthUserAddRequest(name="eve", password="e")))
    users = auth_call(root, "UserList", etcdrpc.AuthUserListRequest()).users
    if sorted(users) != ["alice", "client", "root"]:
        fail("root lists users %r" % list(users))
    roles = auth_call(root, "RoleGet", etcdrpc.AuthRoleGetRequest(role="ranger")).perm
    if [(p.key, p.range_end, p.permType) for p in roles] != [(b"r/a", b"r/m", READ)]:
        fail("role ranger is %r" % roles)


def check(cluster):
    for i, endpoint in enumerate(cluster.endpoints):
        root = cluster.client(endpoint, ROOT)
        alice = cluster.client(endpoint, ALICE)
        check_refusals(cluster, endpoint)
        check_kv_and_txn(alice, root, i)
        check_watch(alice, root, i)
        check_leases(alice, root, i)
        check_admin(alice, root)
        print("check: member %d (%s): kv, txn, watch, lease, admin rules, refusals" % (i, endpoint))


def after_restart(cluster):
    for i, endpoint in enumerate(cluster.endpoints):
        root = cluster.client(endpoint, ROOT)
        alice = cluster.client(endpoint, ALICE)
        check_refusals(cluster, endpoint)
        check_kv_and_txn(alice, root, 10 + i)
        check_admin(alice, root)
        print("after-restart: member %d (%s): users, roles and rules kept" % (i, endpoint))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["setup", "check", "after-restart"])
    parser.add_argument("--endpoints", required=True, help="host:port,host:port,...")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--etcd-3.4", dest="etcd_34", action="store_true",
                        help="the server is etcd 3.4 (no LeaseTimeToLive key check, raw Maintenance errors)")
    args = parser.parse_args()
    global ETCD_34
    ETCD_34 = args.etcd_34
    cluster = Cluster(args)
    {"setup": setup, "check": check, "after-restart": after_restart}[args.phase](cluster)


if __name__ == "__main__":
    main()
