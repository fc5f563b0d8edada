# vmsnap worker image for the main task queue (docker-compose.yml). Host workers run on the
# hypervisor itself, next to libvirtd and qemu-img: see README "Deployment".
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
USER node
