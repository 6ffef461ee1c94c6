//! The watch caches' maps ([`crate::runtime::watches`]): the cached objects by namespace and name.
//!
//! kube's reflector `Store` keys each object by an `ObjectRef` (four strings, some 96 bytes and
//! two allocations per object) and holds a relist's objects in a second map until the relist
//! is complete (every object twice at the peak of a restart). This map keys an object by the
//! name and namespace the object itself holds, so an entry is the object's pointer alone; and a
//! relist replaces the objects in place, then drops the ones it did not see (it notes the ones
//! it saw by address, for as long as it lasts).
//!
//! Names are chosen by tenants: the map hashes with the standard library's keyed hasher, so no
//! set of names collides on purpose.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use kube::runtime::reflector::{Lookup, ObjectRef};
use kube::runtime::watcher;

/// A cached object's key: its namespace ("" for none) and name.
pub trait Keyed {
    fn namespace(&self) -> &str;
    fn name(&self) -> &str;
}

struct Map<K> {
    table: HashTable<Arc<K>>,
    hasher: RandomState,
    /// While a relist is under way: the objects it put, by address (an object's address is
    /// its own while the map holds it). 8 bytes an object for the relist's length, where a flag
    /// in every entry took 8 bytes an object for good (the entry's padding).
    relisted: Option<HashSet<usize>>,
}

impl<K: Keyed> Map<K> {
    fn hash(&self, namespace: &str, name: &str) -> u64 {
        self.hasher.hash_one((namespace, name))
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&Arc<K>> {
        let hash = self.hash(namespace, name);
        self.table
            .find(hash, |e| e.name() == name && e.namespace() == namespace)
    }

    fn put(&mut self, obj: Arc<K>) {
        if let Some(relisted) = &mut self.relisted {
            relisted.insert(address(&obj));
        }
        let hash = self.hash(obj.namespace(), obj.name());
        let hasher = &self.hasher;
        match self.table.find_mut(hash, |e| {
            e.name() == obj.name() && e.namespace() == obj.namespace()
        }) {
            Some(found) => *found = obj,
            None => {
                self.table
                    .insert_unique(hash, obj, |e| hasher.hash_one((e.namespace(), e.name())));
            }
        }
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let hash = self.hash(namespace, name);
        if let Ok(found) = self
            .table
            .find_entry(hash, |e| e.name() == name && e.namespace() == namespace)
        {
            found.remove();
        }
    }

    /// Gives back the room of a map that shrank a lot (deleted objects, or a relist that
    /// dropped many): a map keeps its largest size otherwise.
    fn shrink(&mut self) {
        if worth_shrinking(self.table.len(), self.table.capacity()) {
            let hasher = &self.hasher;
            self.table.shrink_to(self.table.len() * 2, |e| {
                hasher.hash_one((e.namespace(), e.name()))
            });
        }
    }
}

/// The address of a cached object, which names it while the map holds it.
fn address<K>(obj: &Arc<K>) -> usize {
    Arc::as_ptr(obj) as usize
}

/// Whether a table holding `len` entries in room for `capacity` should give room back (to
/// twice `len`): it is past a small size and under a quarter full. The operator's maps and
/// queues keep their largest size otherwise, and a burst (a relist, a resync, a first
/// provisioning) would leave them there.
pub fn worth_shrinking(len: usize, capacity: usize) -> bool {
    capacity > 64 && len < capacity / 4
}

/// The read side: cloned freely, shared by every reader.
pub struct Store<K> {
    map: Arc<RwLock<Map<K>>>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

/// The write side, one per watch.
pub struct Writer<K> {
    map: Arc<RwLock<Map<K>>>,
}

/// A new, empty map: its reader and its writer.
pub fn store<K: Keyed>() -> (Store<K>, Writer<K>) {
    let map = Arc::new(RwLock::new(Map {
        table: HashTable::new(),
        hasher: RandomState::new(),
        relisted: None,
    }));
    (Store { map: map.clone() }, Writer { map })
}

impl<K: Keyed> Store<K> {
    fn read(&self) -> RwLockReadGuard<'_, Map<K>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The object at `namespace`/`name`.
    pub fn lookup(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.read().get(namespace, name).cloned()
    }

    /// The object `key` names.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>>
    where
        K: Lookup,
    {
        self.lookup(key.namespace.as_deref().unwrap_or_default(), &key.name)
    }

    /// Every object.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.read().table.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Keyed + Clone> Writer<K> {
    fn write(&self) -> RwLockWriteGuard<'_, Map<K>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a watch event. A relist (`Init` … `InitApply` … `InitDone`) puts each object it
    /// lists in place of the cached one as it comes, and at its end drops the objects it did
    /// not list (deleted while the watch was down): never two copies of the cache.
    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) {
        let mut map = self.write();
        match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => map.put(Arc::new(obj.clone())),
            watcher::Event::Delete(obj) => {
                map.remove(obj.namespace(), obj.name());
                map.shrink();
            }
            watcher::Event::Init => map.relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                // An InitDone with no Init before it (none comes) keeps everything.
                if let Some(relisted) = map.relisted.take() {
                    map.table.retain(|e| relisted.contains(&address(e)));
                }
                map.shrink();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Obj {
        namespace: String,
        name: String,
        version: u32,
    }

    impl Keyed for Obj {
        fn namespace(&self) -> &str {
            &self.namespace
        }
        fn name(&self) -> &str {
            &self.name
        }
    }

    fn obj(namespace: &str, name: &str, version: u32) -> Obj {
        Obj {
            namespace: namespace.into(),
            name: name.into(),
            version,
        }
    }

    #[test]
    fn objects_are_found_by_namespace_and_name_and_replaced_in_place() {
        let (store, mut writer) = store::<Obj>();
        writer.apply_watcher_event(&watcher::Event::Apply(obj("a", "x", 1)));
        writer.apply_watcher_event(&watcher::Event::Apply(obj("b", "x", 1)));
        writer.apply_watcher_event(&watcher::Event::Apply(obj("a", "x", 2)));
        assert_eq!(store.len(), 2);
        assert_eq!(store.lookup("a", "x").map(|o| o.version), Some(2));
        assert_eq!(store.lookup("b", "x").map(|o| o.version), Some(1));
        // The boundary between namespace and name is part of the key.
        assert_eq!(store.lookup("", "ax"), None);
        assert_eq!(store.lookup("a", "y"), None);
        writer.apply_watcher_event(&watcher::Event::Delete(obj("a", "x", 2)));
        assert_eq!(store.lookup("a", "x"), None);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_relist_replaces_in_place_and_drops_what_it_did_not_list() {
        let (store, mut writer) = store::<Obj>();
        for name in ["kept", "gone", "changed"] {
            writer.apply_watcher_event(&watcher::Event::Apply(obj("a", name, 1)));
        }
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(obj("a", "kept", 1)));
        writer.apply_watcher_event(&watcher::Event::InitApply(obj("a", "changed", 2)));
        // Readers see the relist's objects as they come; the others until its end.
        assert_eq!(store.lookup("a", "changed").map(|o| o.version), Some(2));
        assert!(store.lookup("a", "gone").is_some());
        writer.apply_watcher_event(&watcher::Event::InitApply(obj("a", "new", 1)));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let mut names: Vec<String> = store.state().iter().map(|o| o.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["changed", "kept", "new"]);
    }

    #[test]
    fn a_relist_started_over_keeps_only_what_the_last_one_listed() {
        let (store, mut writer) = store::<Obj>();
        for name in ["a", "b", "c"] {
            writer.apply_watcher_event(&watcher::Event::Apply(obj("ns", name, 1)));
        }
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(obj("ns", "a", 2)));
        // The watch failed mid-list and lists again: "a" is not in the new list.
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(obj("ns", "b", 2)));
        writer.apply_watcher_event(&watcher::Event::InitApply(obj("ns", "c", 1)));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let mut names: Vec<(String, u32)> = store
            .state()
            .iter()
            .map(|o| (o.name.clone(), o.version))
            .collect();
        names.sort();
        assert_eq!(names, [("b".to_string(), 2), ("c".to_string(), 1)]);
        // Between relists, objects come and go by their own events only.
        writer.apply_watcher_event(&watcher::Event::Apply(obj("ns", "d", 1)));
        assert_eq!(store.len(), 3);
        assert!(store.read().relisted.is_none(), "nothing noted outside a relist");
    }

    #[test]
    fn a_map_that_emptied_gives_its_room_back() {
        let (store, mut writer) = store::<Obj>();
        for i in 0..10_000 {
            writer.apply_watcher_event(&watcher::Event::Apply(obj("a", &i.to_string(), 1)));
        }
        let big = store.read().table.capacity();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(obj("a", "1", 1)));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(store.len(), 1);
        assert!(store.read().table.capacity() < big / 4);
    }
}
