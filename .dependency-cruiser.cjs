// Import rules for src/: layers only import downwards, no circles. `npm run lint` runs it.
//
// dependency-cruiser reads .ts through the TypeScript compiler API (TypeScript 2 to 6). TypeScript
// 7 has no such API, and without one dependency-cruiser silently reads no .ts file and reports
// nothing, so refuse to run rather than pass.
const tsVersion = (() => {
  try {
    return require('typescript/package.json').version;
  } catch {
    return 'none';
  }
})();
if (!/^[2-6]\./.test(tsVersion)) {
  throw new Error(
    `dependency-cruiser needs the TypeScript 6 compiler API to read .ts files; "typescript" is ${tsVersion}. ` +
      'Keep tsc at 7 and give tools the 6 API: devDependencies "@typescript/native": "npm:typescript@^7.0.2" ' +
      'and "typescript": "npm:@typescript/typescript6@^6.0.2".',
  );
}

// One ordered list, lowest layer first. A folder may import its own files and the folders
// before it, nothing after it. Folders in one inner list are peers that never import each
// other (the two roles). A new folder is one new entry here.
const LAYERS = [
  'util',
  'model', // the shared vocabulary: imports nothing of ours but util/
  'pki',
  'identity',
  'store',
  'engine', // no protocol, upstream, scope or role
  'routing',
  'protocols',
  'upstream',
  'scope',
  'agent',
  'registry',
  'registry-proxy', // a gateway's /v2/: the pull-through registry API
  'blob-relay', // a gateway's /storage/: blob uploads to the top layer
  ['hub', 'edge'],
  'topology',
  'cli',
];

const ranks = LAYERS.map((entry) => (Array.isArray(entry) ? entry : [entry]));
const folders = (list) => `^src/(${list.join('|')})/`;

const layerRules = ranks.flatMap((rank, i) => {
  const above = ranks.slice(i + 1).flat();
  return rank.map((folder) => {
    const forbidden = [...rank.filter((peer) => peer !== folder), ...above];
    const below = ranks.slice(0, i).flat();
    return {
      name: `layer-${folder}`,
      severity: 'error',
      comment: `${folder}/ imports only ${below.length > 0 ? below.map((f) => `${f}/`).join(', ') : 'nothing of ours'} (lower layers)`,
      from: { path: `^src/${folder}/` },
      to: { path: folders(forbidden) },
    };
  });
});

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: 'layer-unlisted',
      severity: 'error',
      comment: 'every folder of src/ has a place in the layer list of .dependency-cruiser.cjs',
      from: { path: '^src/', pathNot: folders(ranks.flat()) },
      to: {},
    },
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'files import each other in a circle',
      from: {},
      to: { circular: true },
    },
    {
      name: 'no-circular-folders',
      severity: 'error',
      comment: 'folders import each other in a circle',
      scope: 'folder',
      from: {},
      to: { circular: true },
    },
    {
      name: 'src-not-to-tests',
      severity: 'error',
      comment: 'src/ never imports test/ or bench/',
      from: { path: '^src/' },
      to: { path: '^(test|bench)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    // Type-only imports count: they tie layers together as much as value imports do.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    // NodeNext imports name the .ts file itself; conditions as Node resolves them.
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      extensions: ['.ts', '.js', '.mjs', '.cjs', '.d.ts'],
    },
    reporterOptions: { text: { highlightFocused: true } },
  },
};
