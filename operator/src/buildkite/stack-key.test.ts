import { expect } from "chai";
import { stackKey } from "./stacks-client.js";

const VALID = /^[A-Za-z0-9_-]{1,63}$/;
const base = { clusterId: "cluster-a", namespace: "ci", queue: "linux", uid: "3b5e0f4c-0000-4000-8000-000000000001" };

describe("stackKey", () => {
  it("is stable and readable", () => {
    expect(stackKey(base)).to.equal(stackKey({ ...base }));
    expect(stackKey(base)).to.match(/^bk-op-ci-linux-[0-9a-f]{16}$/);
  });

  it("differs across clusters, namespaces, queues and a queue made anew under the same name, including ambiguous joins", () => {
    const keys = [
      base,
      { ...base, clusterId: "cluster-b" },
      { ...base, namespace: "ci2" },
      { ...base, queue: "linux2" },
      { ...base, uid: "3b5e0f4c-0000-4000-8000-000000000002" },
      { ...base, clusterId: "cluster-a", namespace: "ci-linux", queue: "" },
      { ...base, clusterId: "cluster-a", namespace: "ci", queue: "-linux" },
    ].map(stackKey);
    expect(new Set(keys).size).to.equal(keys.length);
  });

  it("stays within 63 characters of [A-Za-z0-9_-] for long and odd names", () => {
    const odd = [
      { clusterId: "c", namespace: "n".repeat(63), queue: "q".repeat(200), uid: "u" },
      { clusterId: "c", namespace: "team.a", queue: "gpu/large ✓", uid: "u" },
      { clusterId: "c", namespace: "", queue: "...", uid: "u" },
      { clusterId: "c", namespace: "ns", queue: "_default", uid: "u" },
    ];
    for (const parts of odd) expect(stackKey(parts)).to.match(VALID);
    expect(stackKey({ clusterId: "c", namespace: "", queue: "...", uid: "u" })).to.match(/^bk-op-[0-9a-f]{16}$/);
    expect(stackKey(odd[0] ?? base)).to.have.length(63);
  });
});
