import { expect } from "chai";
import { KubeRaw, KubeRequestError, STRATEGIC_MERGE_PATCH } from "./kube-raw.js";
import { StandInApi } from "./stand-in-api.js";

// Its list and watch are tested with the informer over them (operator/src/kube/lean-informer.test.ts).
describe("KubeRaw (against a stand-in API server)", () => {
  let api: StandInApi;
  before(async () => {
    api = await StandInApi.start();
  });
  after(() => api.close());

  it("sends JSON with the kubeconfig's credentials and classifies a refusal by status code", async () => {
    const kube = new KubeRaw(api.kubeConfig());
    const pods = "/api/v1/namespaces/ci/pods";
    await kube.send("PATCH", `${pods}/p/status`, { status: { phase: "Running" } }, STRATEGIC_MERGE_PATCH);
    const refused = await kube.send("PATCH", `${pods}/gone/status`, {}, STRATEGIC_MERGE_PATCH).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(refused).to.be.instanceOf(KubeRequestError).with.property("code", 404);
    expect(api.seen).to.deep.equal([`PATCH ${pods}/p/status`, `PATCH ${pods}/gone/status`]);
    expect([...api.tokens]).to.deep.equal(["Bearer t0ken"]);
  });
});
