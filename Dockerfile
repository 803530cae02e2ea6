# The operator's container image. Built by hack/build-image.sh, which stages everything the image holds in
# .tmp/image/ first (no registry is needed, nothing is downloaded):
#   runtime/  the project's own Node binary (npm package `node`), the shared libraries `ldd` lists for it and the
#             dynamic loader, /etc/passwd and /etc/group naming uid 65532, an empty /tmp;
#   app/      dist/operator (tests left out), a package.json saying "type": "module", production node_modules.
# The base defaults to scratch, since the runtime stage carries every library Node links against; any other base
# (a distroless one, say) works the same way.
ARG BASE_IMAGE=scratch

FROM scratch AS runtime
COPY .tmp/image/runtime/ /

FROM ${BASE_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="buildkite-operator" \
      org.opencontainers.image.description="Runs each Buildkite job in its own isolated, shaped, throwaway pod." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
# One layer per rate of change: Node (rarely), dependencies (sometimes), the operator (every build).
COPY --from=runtime / /
COPY .tmp/image/app/node_modules/ /app/node_modules/
COPY .tmp/image/app/package.json /app/package.json
COPY .tmp/image/app/dist/ /app/dist/
ENV NODE_ENV=production
WORKDIR /app
# Pod Security "restricted" wants a non-root uid; 65532 is distroless's "nonroot". Numeric, so the kubelet can check
# runAsNonRoot without an /etc/passwd lookup.
USER 65532:65532
# /healthz, /readyz and /metrics (--http-port).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/node", "/app/dist/operator/src/main.js"]
