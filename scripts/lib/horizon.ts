// Horizon (Debian's openstack-dashboard) on the stack: Django's server on loopback with a settings
// module of its own under the data dir, which takes Debian's settings and points them at the
// stack's Keystone over HTTPS (its CA), so that the dashboard finds vmsnap's compute API and
// Glance in the catalog. Sessions are signed cookies and the cache is in memory: no memcached,
// no database. /etc/openstack-dashboard is never edited.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { keystoneUrl } from './keystone.js';
import { httpOk, ownedService, type Service, type StackConfig } from './stack.js';
import { tlsPaths } from './tls.js';

/** Debian's Horizon: its manage.py, run by Debian's interpreter (the first python3 on PATH may lack Django). */
const MANAGE = '/usr/share/openstack-dashboard/manage.py';
const PYTHON = '/usr/bin/python3';
/** The settings module written under <data dir>/horizon. */
const SETTINGS_MODULE = 'vmsnap_horizon_settings';

export const horizonUrl = (cfg: Pick<StackConfig, 'horizonPort'>) => `http://127.0.0.1:${cfg.horizonPort}`;

export function horizonPaths(dataDir: string) {
  const dir = join(dataDir, 'horizon');
  return { dir, settings: join(dir, `${SETTINGS_MODULE}.py`), secretKey: join(dir, 'secret_key') };
}

/** Python's literal for a string (JSON's is one). */
const py = (value: string) => JSON.stringify(value);

/** The settings module: Debian's settings, then what the stack needs on top of them. */
export function horizonSettings(cfg: StackConfig): string {
  const paths = horizonPaths(cfg.dataDir);
  return `# Written by vmsnap's stack (scripts/lib/horizon.ts) on every start: edits are lost.
# Debian's settings (/etc/openstack-dashboard/local_settings.py and local_settings.d) first.
from openstack_dashboard.settings import *  # noqa: F401,F403

# Kept in the data dir (mode 600), made once per stack.
with open(${py(paths.secretKey)}) as f:
    SECRET_KEY = f.read().strip()

DEBUG = False
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']

# The stack's Keystone over HTTPS, trusted through the stack's CA; compute and image come from its catalog.
OPENSTACK_KEYSTONE_URL = ${py(keystoneUrl(cfg))}
OPENSTACK_SSL_CACERT = ${py(tlsPaths(cfg.dataDir).ca)}
OPENSTACK_SSL_NO_VERIFY = False
OPENSTACK_KEYSTONE_DEFAULT_DOMAIN = 'Default'
OPENSTACK_KEYSTONE_MULTIDOMAIN_SUPPORT = False
OPENSTACK_ENDPOINT_TYPE = 'publicURL'
OPENSTACK_API_VERSIONS = {'identity': 3, 'image': 2, 'compute': 2}
WEBSSO_ENABLED = False

# Sessions in signed cookies and a cache in memory: no memcached or database to run.
SESSION_ENGINE = 'django.contrib.sessions.backends.signed_cookies'
CACHES = {'default': {'BACKEND': 'django.core.cache.backends.locmem.LocMemCache'}}
# Plain HTTP on loopback.
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False

# vmsnap serves no networks or volumes: the catalog has no network or volume service, and
# Horizon's own features for them are off so that no page asks for them.
OPENSTACK_NEUTRON_NETWORK = {
    'enable_router': False,
    'enable_quotas': False,
    'enable_ipv6': False,
    'enable_distributed_router': False,
    'enable_ha_router': False,
    'enable_fip_topology_check': False,
}
OPENSTACK_CINDER_FEATURES = {'enable_backup': False}
OPENSTACK_HYPERVISOR_FEATURES = {
    'can_set_mount_point': False,
    'can_set_password': False,
    'requires_keypair': False,
    'enable_quotas': False,
}
OPENSTACK_INSTANCE_RETRIEVE_IP_ADDRESSES = False
OPENSTACK_PROFILER = {'enabled': False}
OPENSTACK_HEAT_STACK = {'enable_user_pass': False}

# Static files were compressed when the package was installed (COMPRESS_OFFLINE in Debian's
# local_settings.d); the server serves them from there (--insecure), nothing from outside.
COMPRESS_OFFLINE = True

# The log on stderr, which the stack keeps in <data dir>/logs/horizon.log.
LOGGING['handlers']['console']['level'] = 'INFO'
for _name in ('horizon', 'openstack_dashboard', 'novaclient', 'keystoneauth', 'openstack_auth', 'django'):
    LOGGING['loggers'][_name]['level'] = 'INFO'
`;
}

/** Writes the settings module and, once, the secret key (mode 600). */
function prepareHorizon(cfg: StackConfig): void {
  const paths = horizonPaths(cfg.dataDir);
  if (!existsSync(MANAGE)) throw new Error(`horizon: ${MANAGE} is missing: install openstack-dashboard (run ./scripts/setup)`);
  mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
  mkdirSync(join(cfg.dataDir, 'logs'), { recursive: true });
  if (!existsSync(paths.secretKey)) writeFileSync(paths.secretKey, `${randomBytes(48).toString('base64url')}\n`, { mode: 0o600 });
  writeFileSync(paths.settings, horizonSettings(cfg));
}

/** Horizon on 127.0.0.1:<horizonPort>, healthy once its login page answers. */
export function horizonService(cfg: StackConfig): Service {
  const paths = horizonPaths(cfg.dataDir);
  const url = horizonUrl(cfg);
  return ownedService({
    name: 'horizon',
    program: MANAGE,
    dataDir: cfg.dataDir,
    ports: () => [cfg.horizonPort],
    prepare: async () => prepareHorizon(cfg),
    start: () => ({
      command: PYTHON,
      // Django's server with its static files (--insecure: they are served though DEBUG is off); one process.
      args: [MANAGE, 'runserver', `127.0.0.1:${cfg.horizonPort}`, '--insecure', '--noreload'],
      cwd: paths.dir,
      env: { DJANGO_SETTINGS_MODULE: SETTINGS_MODULE, PYTHONPATH: paths.dir, PYTHONUNBUFFERED: '1' },
    }),
    healthy: async () => httpOk(`${url}/auth/login/`),
    endpoints: () => ({ url, log: join(cfg.dataDir, 'logs', 'horizon.log') }),
    startTimeoutMs: 120_000,
  });
}
