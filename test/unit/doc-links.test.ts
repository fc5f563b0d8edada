// Every link of README.md, ARCHITECTURE.md and docs/*.md leads somewhere: a relative link names a
// file or folder of the repository, and an `#anchor` a heading of its target as GitHub slugs it.
// External http(s) links are checked for form only: the tests reach no network.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import GithubSlugger from 'github-slugger';
import { marked, type Token, type Tokens } from 'marked';

type Link = { file: string; href: string };

/** Every token of a document, depth first: inline ones in paragraphs, lists, tables and headings too. */
function* walk(tokens: Token[]): Generator<Token> {
  for (const t of tokens) {
    yield t;
    if ('tokens' in t && t.tokens) yield* walk(t.tokens);
    if (t.type === 'list') for (const item of (t as Tokens.List).items) yield* walk(item.tokens);
    if (t.type === 'table') {
      const table = t as Tokens.Table;
      for (const cell of [...table.header, ...table.rows.flat()]) yield* walk(cell.tokens);
    }
  }
}

/** A heading's text as GitHub renders it (code without backticks, no HTML tags). */
function plainText(tokens: Token[]): string {
  return tokens.map((t) => ('tokens' in t && t.tokens ? plainText(t.tokens) : t.type === 'html' ? '' : 'text' in t ? String(t.text) : '')).join('');
}

function parse(file: string): { links: Link[]; anchors: Set<string> } {
  const tokens = marked.lexer(readFileSync(file, 'utf8'));
  const slugger = new GithubSlugger(); // per document: a repeated heading gets -1, -2, ... as on GitHub
  const links: Link[] = [];
  const anchors = new Set<string>();
  for (const t of walk(tokens)) {
    if (t.type === 'link' || t.type === 'image') links.push({ file, href: (t as Tokens.Link).href });
    if (t.type === 'heading') anchors.add(slugger.slug(plainText((t as Tokens.Heading).tokens)));
  }
  return { links, anchors };
}

/** What is wrong with one link, or undefined when it leads somewhere. */
function problem(root: string, { file, href }: Link): string | undefined {
  if (/^[a-z][a-z0-9+.-]*:/i.test(href)) {
    if (!/^https?:\/\//i.test(href)) return 'not an http(s) link nor a relative path';
    try {
      return new URL(href).hostname ? undefined : 'no host name';
    } catch {
      return 'not a valid URL';
    }
  }
  const [path = '', anchor] = href.split('#', 2);
  const target = path ? resolve(dirname(file), decodeURIComponent(path)) : file;
  if (relative(root, target).startsWith('..')) return 'leads out of the repository';
  if (!existsSync(target)) return `${relative(root, target)} does not exist`;
  if (anchor === undefined) return undefined;
  if (statSync(target).isDirectory() || !target.endsWith('.md')) return `#${anchor} on a file that is not markdown`;
  return parse(target).anchors.has(decodeURIComponent(anchor)) ? undefined : `no heading #${anchor} in ${relative(root, target)}`;
}

/** The broken links of the given markdown files, one line each (a link repeated in a file, once). */
function brokenLinks(root: string, files: string[]): { checked: number; broken: string[] } {
  const links = files.flatMap((f) => parse(f).links);
  const broken = links.flatMap((l) => {
    const why = problem(root, l);
    return why ? [`${relative(root, l.file)}: (${l.href}): ${why}`] : [];
  });
  return { checked: links.length, broken: [...new Set(broken)] };
}

describe('links in the documentation', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'vmsnap-doc-links-'));
  after(() => rmSync(scratch, { recursive: true, force: true }));

  it('every link of README.md, ARCHITECTURE.md and docs/*.md leads somewhere', () => {
    const root = resolve('.');
    const docs = readdirSync('docs')
      .filter((f) => f.endsWith('.md'))
      .map((f) => resolve('docs', f));
    assert.ok(docs.length >= 6, `docs/ holds the pages README links to: ${docs.join(' ')}`);
    const { checked, broken } = brokenLinks(root, [resolve('README.md'), resolve('ARCHITECTURE.md'), ...docs]);
    assert.ok(checked > 40, `only ${checked} links found: is the parser reading the files?`);
    assert.deepEqual(broken, []);
  });

  it('finds a missing file, a missing heading, a malformed URL and another scheme, and passes good links', () => {
    writeFileSync(
      join(scratch, 'a.md'),
      [
        '# Title',
        '## The `vmsnap` command, in short',
        '## Title',
        'Good: [self](#title), [repeat](#title-1), [code](#the-vmsnap-command-in-short), [b](b.md#part-two), [dir](.), ' +
          '[web](https://temporal.io/docs), http://127.0.0.1:8233',
        'Bad: [gone](missing.md), [heading](b.md#part-three), [url](https://), [scheme](ftp://x.example/y), [out](../outside.md), ' +
          '[anchor on text](c.txt#x)',
        '```',
        '[in code, not a link](nowhere.md)',
        '```',
      ].join('\n\n'),
    );
    writeFileSync(join(scratch, 'b.md'), '# B\n\n## Part two\n');
    writeFileSync(join(scratch, 'c.txt'), 'text\n');
    const { checked, broken } = brokenLinks(scratch, [join(scratch, 'a.md')]);
    assert.equal(checked, 13);
    assert.deepEqual(broken, [
      'a.md: (missing.md): missing.md does not exist',
      'a.md: (b.md#part-three): no heading #part-three in b.md',
      'a.md: (https://): not a valid URL',
      'a.md: (ftp://x.example/y): not an http(s) link nor a relative path',
      'a.md: (../outside.md): leads out of the repository',
      'a.md: (c.txt#x): #x on a file that is not markdown',
    ]);
  });
});
