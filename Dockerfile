# syntax=docker/dockerfile:1
# tidegate node image. Node 24 runs the TypeScript sources directly (type stripping), so there is
# no emitted JavaScript: the build stage type-checks and runs nothing else.

FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only; no install scripts (msgpackr-extract is optional).
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-bookworm-slim AS check
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY test ./test
COPY bin ./bin
RUN npx tsc --noEmit

FROM node:24-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY --from=check /app/src ./src
COPY --from=check /app/bin ./bin
COPY profiles ./profiles
COPY config ./config
COPY examples ./examples
# The image's own user, not root. Mount the config at /etc/tidegate/node.json and keys read-only.
USER node
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# node itself is PID 1, not npm: npm does not pass SIGTERM (docker stop) on, which would orphan the node.
ENTRYPOINT ["node", "src/cli/main.ts"]
CMD ["serve", "--config", "/etc/tidegate/node.json"]
