# vmsnap worker image for the main task queue (docker-compose.yml). Host workers run on the
# hypervisor itself, next to libvirtd and qemu-img: see README "Deployment" (deploy/systemd/).

# Build stage: every dependency, the TypeScript compile and the prebuilt workflow bundle.
FROM node:20-bookworm-slim AS build
# better-sqlite3 builds from source where no prebuilt binary matches.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

# Final stage: production dependencies and dist/ only; no compiler, no sources, no bundler run.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
# Memory: two malloc arenas, not one per thread of the Temporal core, and a 1 MiB young generation
# (CMD): ~40 MiB less at idle (npm run bench -- --section startup).
ENV MALLOC_ARENA_MAX=2
WORKDIR /app
COPY --from=build /app/package.json /app/package-lock.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY bin ./bin
USER node
CMD ["node", "--max-semi-space-size=1", "dist/worker/main.js"]
