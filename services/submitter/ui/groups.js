// The groups as a tree (a group `a.b` sits under `a`), with members and what waits and
// runs in each (from GET /v1/stats, which counts subgroups in).
import { api, el, start, every } from './common.js';

start(async (who, main) => {
  const tree = el('div', { id: 'groups-tree', class: 'card' });
  main.replaceChildren(el('h1', {}, 'Groups'), tree);
  every(5000, async () => {
    const [{ groups }, stats] = await Promise.all([api('/v1/groups'), api('/v1/stats')]);
    const figures = new Map(stats.groups.map((g) => [g.group, g]));
    const byName = new Map(groups.map((g) => [g.name, g]));
    const children = new Map();
    const roots = [];
    for (const g of groups) {
      const parent = g.parent && byName.has(g.parent) && g.parent !== g.name ? g.parent : null;
      if (parent) {
        if (!children.has(parent)) children.set(parent, []);
        children.get(parent).push(g);
      } else {
        roots.push(g);
      }
    }
    const node = (g) => {
      const f = figures.get(g.name);
      const kids = (children.get(g.name) ?? []).sort((a, b) => a.name.localeCompare(b.name));
      return el('li', { 'data-group': g.name },
        el('span', { class: 'node-name' }, g.name), ' ',
        g.description ? el('span', { class: 'muted' }, g.description) : null,
        f ? el('span', { class: 'muted' },
          ` — ${f.tasks.ready} ready, ${f.tasks.running} running, ${f.executors.alive} executors alive, ${f.slots.free}/${f.slots.total} slots free`) : null,
        (g.members ?? []).length ? el('div', {}, g.members.map((m) =>
          el('span', { class: 'chip', title: m.source }, m.executor_id, m.source === 'assigned' ? ' (assigned)' : ''))) : null,
        kids.length ? el('ul', { class: 'tree' }, kids.map(node)) : null);
    };
    roots.sort((a, b) => (a.name === 'default' ? -1 : b.name === 'default' ? 1 : a.name.localeCompare(b.name)));
    tree.replaceChildren(el('ul', { class: 'tree root' }, roots.map(node)));
  });
});
