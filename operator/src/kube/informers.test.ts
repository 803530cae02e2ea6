import type { V1Pod } from "@kubernetes/client-node";
import { expect } from "chai";
import { slimPod } from "./informers.js";

describe("slimPod", () => {
  it("keeps only the claim volumes (what the queue controller checks before deleting a claim), and drops the bulk", () => {
    const pod: V1Pod = {
      metadata: { name: "p", annotations: { a: "b" } },
      spec: {
        containers: [{ name: "agent", env: [{ name: "X", value: "y" }], args: ["start"] }],
        volumes: [
          { name: "workspace", emptyDir: {} },
          { name: "cache-gomod", persistentVolumeClaim: { claimName: "bkq-linux-gomod-0123456789abcdef0123-0" } },
        ],
      },
    };
    slimPod(pod);
    expect(pod.spec?.volumes).to.deep.equal([
      { name: "cache-gomod", persistentVolumeClaim: { claimName: "bkq-linux-gomod-0123456789abcdef0123-0" } },
    ]);
    expect(pod.spec?.containers[0]).to.deep.equal({ name: "agent" });
    expect(pod.metadata).to.deep.equal({ name: "p" });
    const plain: V1Pod = { spec: { containers: [], volumes: [{ name: "workspace", emptyDir: {} }] } };
    slimPod(plain);
    expect(plain.spec).to.not.have.property("volumes");
  });
});
