const _: () = ::ultradict::__private::storable::<u64>();
const _: () = ::ultradict::__private::storable::<String>();
const _: () = ::ultradict::__private::key::<u32>();
const _: () = ::ultradict::__private::value::<Worker>();
///The plain fields of [`AppState`], archived as its dict's full dump.
#[doc(hidden)]
#[derive(
    ::ultradict::rkyv::Archive,
    ::ultradict::rkyv::Serialize,
    ::ultradict::rkyv::Deserialize,
    ::core::clone::Clone
)]
#[rkyv(
    crate = ::ultradict::rkyv,
    archived = __UltradictArchivedFieldsOfAppState,
    resolver = __UltradictFieldsResolverOfAppState
)]
pub struct __UltradictGenericFieldsOfAppState<__T0, __T1> {
    counter: __T0,
    label: __T1,
}
///The plain fields of [`AppState`], archived as its dict's full dump.
#[doc(hidden)]
pub type __UltradictFieldsOfAppState = __UltradictGenericFieldsOfAppState<u64, String>;
///One record of [`AppState`]'s stream: one field, or all of them.
#[doc(hidden)]
#[derive(
    ::ultradict::rkyv::Archive,
    ::ultradict::rkyv::Serialize,
    ::ultradict::rkyv::Deserialize
)]
#[rkyv(
    crate = ::ultradict::rkyv,
    archived = __UltradictArchivedUpdateOfAppState,
    resolver = __UltradictUpdateResolverOfAppState
)]
pub enum __UltradictGenericUpdateOfAppState<__T0, __T1> {
    Counter(__T0),
    Label(__T1),
    __All(__UltradictGenericFieldsOfAppState<__T0, __T1>),
}
///One record of [`AppState`]'s stream: one field, or all of them.
#[doc(hidden)]
pub type __UltradictUpdateOfAppState = __UltradictGenericUpdateOfAppState<u64, String>;
///A process's changes to [`AppState`]'s fields since the last dump.
#[doc(hidden)]
#[derive(::core::default::Default)]
pub struct __UltradictOverlayOfAppState {
    counter: ::core::option::Option<u64>,
    label: ::core::option::Option<String>,
}
#[automatically_derived]
impl ::ultradict::__private::StructFields for __UltradictFieldsOfAppState
where
    for<'__ud> u64: ::ultradict::__private::Storable,
    for<'__ud> String: ::ultradict::__private::Storable,
    for<'__ud> u32: ::ultradict::__private::StorableKey,
    for<'__ud> Worker: ::ultradict::__private::Storable,
{
    type Update = __UltradictUpdateOfAppState;
    type Overlay = __UltradictOverlayOfAppState;
    fn fingerprint() -> ::ultradict::Fingerprint {
        ::ultradict::Fingerprint::new(
            ::std::format!(
                "AppState {{ counter: {}, label: {}, stats: nested {}, by-id: nested {} }}",
                ::core::any::type_name:: < u64 > (), ::core::any::type_name:: < String >
                (), ::core::any::type_name:: < Stats > (), ::core::any::type_name:: <
                HashMap < u32, Worker > > ()
            ),
            &[
                ::ultradict::Fingerprint::layout_of::<u64>(),
                ::ultradict::Fingerprint::layout_of::<String>(),
            ],
        )
    }
    fn apply(
        overlay: &mut __UltradictOverlayOfAppState,
        update: __UltradictUpdateOfAppState,
    ) {
        match update {
            __UltradictUpdateOfAppState::Counter(value) => {
                overlay.counter = ::core::option::Option::Some(value);
            }
            __UltradictUpdateOfAppState::Label(value) => {
                overlay.label = ::core::option::Option::Some(value);
            }
            __UltradictUpdateOfAppState::__All(all) => {
                overlay.counter = ::core::option::Option::Some(all.counter);
                overlay.label = ::core::option::Option::Some(all.label);
            }
        }
    }
    fn materialize(
        dump: &<Self as ::ultradict::rkyv::Archive>::Archived,
        overlay: &__UltradictOverlayOfAppState,
    ) -> ::core::result::Result<Self, ::ultradict::rkyv::rancor::Error> {
        ::core::result::Result::Ok(Self {
            counter: match &overlay.counter {
                ::core::option::Option::Some(value) => ::core::clone::Clone::clone(value),
                ::core::option::Option::None => {
                    ::ultradict::__private::deserialize::<u64>(&dump.counter)?
                }
            },
            label: match &overlay.label {
                ::core::option::Option::Some(value) => ::core::clone::Clone::clone(value),
                ::core::option::Option::None => {
                    ::ultradict::__private::deserialize::<String>(&dump.label)?
                }
            },
        })
    }
    fn apply_to(fields: &mut Self, update: &__UltradictUpdateOfAppState) {
        match update {
            __UltradictUpdateOfAppState::Counter(value) => {
                fields.counter = ::core::clone::Clone::clone(value);
            }
            __UltradictUpdateOfAppState::Label(value) => {
                fields.label = ::core::clone::Clone::clone(value);
            }
            __UltradictUpdateOfAppState::__All(all) => {
                *fields = ::core::clone::Clone::clone(all);
            }
        }
    }
    fn replace_all(self) -> __UltradictUpdateOfAppState {
        __UltradictUpdateOfAppState::__All(self)
    }
    fn from_update(
        update: &__UltradictUpdateOfAppState,
    ) -> ::core::option::Option<Self> {
        match update {
            __UltradictUpdateOfAppState::__All(all) => {
                ::core::option::Option::Some(::core::clone::Clone::clone(all))
            }
            #[allow(unreachable_patterns)]
            _ => ::core::option::Option::None,
        }
    }
}
#[automatically_derived]
impl ::ultradict::__private::Touches<&'static str> for __UltradictUpdateOfAppState {
    fn touched(&self, out: &mut ::std::vec::Vec<&'static str>) -> bool {
        match self {
            __UltradictUpdateOfAppState::Counter(_) => out.push("counter"),
            __UltradictUpdateOfAppState::Label(_) => out.push("label"),
            __UltradictUpdateOfAppState::__All(_) => {
                let all: &[&'static str] = &["counter", "label"];
                out.extend_from_slice(all);
            }
        }
        true
    }
}
#[cfg(not(doc))]
///The shared handle of [`AppState`], generated by `#[derive(SharedDict)]`: every process that opens the same name shares it. Each plain field has a getter, a setter and an atomic `update_` method; each nested field has an accessor for its own dict.
pub struct SharedAppState
where
    for<'__ud> u64: ::ultradict::__private::Storable,
    for<'__ud> String: ::ultradict::__private::Storable,
    for<'__ud> u32: ::ultradict::__private::StorableKey,
    for<'__ud> Worker: ::ultradict::__private::Storable,
{
    __dict: ::ultradict::__private::StructDict<__UltradictFieldsOfAppState>,
    stats: ::ultradict::__private::Nested<Stats>,
    workers: ::ultradict::UltraDict<u32, Worker>,
}
#[cfg(not(doc))]
#[automatically_derived]
impl ::core::fmt::Debug for SharedAppState
where
    for<'__ud> u64: ::ultradict::__private::Storable,
    for<'__ud> String: ::ultradict::__private::Storable,
    for<'__ud> u32: ::ultradict::__private::StorableKey,
    for<'__ud> Worker: ::ultradict::__private::Storable,
{
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        f.debug_struct(::core::stringify!(SharedAppState))
            .field("name", &self.__dict.name())
            .finish_non_exhaustive()
    }
}
#[cfg(not(doc))]
#[automatically_derived]
impl SharedAppState
where
    for<'__ud> u64: ::ultradict::__private::Storable,
    for<'__ud> String: ::ultradict::__private::Storable,
    for<'__ud> u32: ::ultradict::__private::StorableKey,
    for<'__ud> Worker: ::ultradict::__private::Storable,
{
    ///The current `counter`, as every process sees it.
    ///
    /// # Errors
    /// If shared memory fails validation.
    pub fn counter(&self) -> ::ultradict::Result<u64> {
        self.__dict
            .read(|dump, overlay| {
                self.__dict.field::<u64>("counter", &overlay.counter, &dump.counter)
            })
    }
    ///Sets `counter` in every process (streams this field's record only).
    ///
    /// # Errors
    /// If a full dump was needed and could not be written; nothing changed then.
    pub fn set_counter(&self, value: u64) -> ::ultradict::Result<()> {
        self.__dict.write(__UltradictUpdateOfAppState::Counter(value))
    }
    ///Atomically replaces `counter` with `f(current)` and returns the new value: no other process or thread writes this state in between.
    ///
    /// # Errors
    /// As the setter.
    pub fn update_counter(
        &self,
        f: impl ::core::ops::FnOnce(u64) -> u64,
    ) -> ::ultradict::Result<u64> {
        self.__dict
            .modify(
                |dump, overlay| {
                    self.__dict.field::<u64>("counter", &overlay.counter, &dump.counter)
                },
                |current| {
                    let value = f(current);
                    (
                        __UltradictUpdateOfAppState::Counter(
                            ::core::clone::Clone::clone(&value),
                        ),
                        value,
                    )
                },
            )
    }
    ///The current `label`, as every process sees it.
    ///
    /// # Errors
    /// If shared memory fails validation.
    pub fn label(&self) -> ::ultradict::Result<String> {
        self.__dict
            .read(|dump, overlay| {
                self.__dict.field::<String>("label", &overlay.label, &dump.label)
            })
    }
    ///Sets `label` in every process (streams this field's record only).
    ///
    /// # Errors
    /// If a full dump was needed and could not be written; nothing changed then.
    pub fn set_label(&self, value: String) -> ::ultradict::Result<()> {
        self.__dict.write(__UltradictUpdateOfAppState::Label(value))
    }
    ///Atomically replaces `label` with `f(current)` and returns the new value: no other process or thread writes this state in between.
    ///
    /// # Errors
    /// As the setter.
    pub fn update_label(
        &self,
        f: impl ::core::ops::FnOnce(String) -> String,
    ) -> ::ultradict::Result<String> {
        self.__dict
            .modify(
                |dump, overlay| {
                    self.__dict.field::<String>("label", &overlay.label, &dump.label)
                },
                |current| {
                    let value = f(current);
                    (
                        __UltradictUpdateOfAppState::Label(
                            ::core::clone::Clone::clone(&value),
                        ),
                        value,
                    )
                },
            )
    }
    ///The nested dict of `stats`, shared like this one.
    pub fn stats(&self) -> &::ultradict::__private::Nested<Stats> {
        &self.stats
    }
    ///Replaces all of `stats` (one full dump of its dict).
    ///
    /// # Errors
    /// If the full dump could not be written; nothing changed then.
    pub fn set_stats(&self, value: Stats) -> ::ultradict::Result<()> {
        self.stats.replace(value)
    }
    ///The nested dict of `workers`, shared like this one.
    pub fn workers(&self) -> &::ultradict::UltraDict<u32, Worker> {
        &self.workers
    }
    ///Replaces all of `workers` (one full dump of its dict).
    ///
    /// # Errors
    /// If the full dump could not be written; nothing changed then.
    pub fn set_workers(&self, value: HashMap<u32, Worker>) -> ::ultradict::Result<()> {
        self.workers.replace_all(value)
    }
    ///An owned copy of the whole [`AppState`], nested dicts included.
    ///
    /// # Errors
    /// If shared memory fails validation.
    pub fn snapshot(&self) -> ::ultradict::Result<AppState> {
        let _guard = self.lock()?;
        let __fields = self.__dict.fields()?;
        ::core::result::Result::Ok(AppState {
            counter: __fields.counter,
            label: __fields.label,
            stats: self.stats.snapshot()?,
            workers: self.workers.to_hashmap()?,
        })
    }
    ///Replaces the whole [`AppState`]: nested dicts first, then the plain fields in one record, so a process that sees the new plain fields also sees the new nested values.
    ///
    /// # Errors
    /// If a full dump could not be written; nothing changed in this dict then.
    pub fn replace(&self, value: AppState) -> ::ultradict::Result<()> {
        let _guard = self.lock()?;
        let AppState { counter, label, stats, workers } = value;
        self.stats.replace(stats)?;
        self.workers.replace_all(workers)?;
        self.__dict
            .write(
                ::ultradict::__private::StructFields::replace_all(__UltradictFieldsOfAppState {
                    counter,
                    label,
                }),
            )?;
        ::core::result::Result::Ok(())
    }
    ::ultradict::__handle_methods!(__dict, & 'static str);
    /// Closes the handle and returns the final state. Under `Lifetime::LastClose`
    /// the last handle to close removes the state and its nested dicts.
    ///
    /// # Errors
    /// As `snapshot`, or if removing segments failed.
    pub fn close(self) -> ::ultradict::Result<AppState> {
        let value = self.snapshot()?;
        let SharedAppState { __dict, stats, workers } = self;
        ::core::mem::drop(stats);
        ::core::mem::drop(workers);
        __dict.close()?;
        ::core::result::Result::Ok(value)
    }
}
#[cfg(doc)]
///The shared handle of [`AppState`], generated by `#[derive(SharedDict)]`: every process that opens the same name shares it. Each plain field has a getter, a setter and an atomic `update_` method; each nested field has an accessor for its own dict.
pub struct SharedAppState {
    __dict: ::ultradict::__private::StructDict<__UltradictFieldsOfAppState>,
    stats: ::ultradict::__private::Nested<Stats>,
    workers: ::ultradict::UltraDict<u32, Worker>,
}
#[cfg(doc)]
#[automatically_derived]
impl ::core::fmt::Debug for SharedAppState {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        f.debug_struct(::core::stringify!(SharedAppState))
            .field("name", &self.__dict.name())
            .finish_non_exhaustive()
    }
}
#[cfg(doc)]
#[automatically_derived]
impl SharedAppState {
    ///The current `counter`, as every process sees it.
    ///
    /// # Errors
    /// If shared memory fails validation.
    pub fn counter(&self) -> ::ultradict::Result<u64> {
        self.__dict
            .read(|dump, overlay| {
                self.__dict.field::<u64>("counter", &overlay.counter, &dump.counter)
            })
    }
    ///Sets `counter` in every process (streams this field's record only).
    ///
    /// # Errors
    /// If a full dump was needed and could not be written; nothing changed then.
    pub fn set_counter(&self, value: u64) -> ::ultradict::Result<()> {
        self.__dict.write(__UltradictUpdateOfAppState::Counter(value))
    }
    ///Atomically replaces `counter` with `f(current)` and returns the new value: no other process or thread writes this state in between.
    ///
    /// # Errors
    /// As the setter.
    pub fn update_counter(
        &self,
        f: impl ::core::ops::FnOnce(u64) -> u64,
    ) -> ::ultradict::Result<u64> {
        self.__dict
            .modify(
                |dump, overlay| {
                    self.__dict.field::<u64>("counter", &overlay.counter, &dump.counter)
                },
                |current| {
                    let value = f(current);
                    (
                        __UltradictUpdateOfAppState::Counter(
                            ::core::clone::Clone::clone(&value),
                        ),
                        value,
                    )
                },
            )
    }
    ///The current `label`, as every process sees it.
    ///
    /// # Errors
    /// If shared memory fails validation.
    pub fn label(&self) -> ::ultradict::Result<String> {
        self.__dict
            .read(|dump, overlay| {
                self.__dict.field::<String>("label", &overlay.label, &dump.label)
            })
    }
    ///Sets `label` in every process (streams this field's record only).
    ///
    /// # Errors
    /// If a full dump was needed and could not be written; nothing changed then.
    pub fn set_label(&self, value: String) -> ::ultradict::Result<()> {
        self.__dict.write(__UltradictUpdateOfAppState::Label(value))
    }
    ///Atomically replaces `label` with `f(current)` and returns the new value: no other process or thread writes this state in between.
    ///
    /// # Errors
    /// As the setter.
    pub fn update_label(
        &self,
        f: impl ::core::ops::FnOnce(String) -> String,
    ) -> ::ultradict::Result<String> {
        self.__dict
            .modify(
                |dump, overlay| {
                    self.__dict.field::<String>("label", &overlay.label, &dump.label)
                },
                |current| {
                    let value = f(current);
                    (
                        __UltradictUpdateOfAppState::Label(
                            ::core::clone::Clone::clone(&value),
                        ),
                        value,
                    )
                },
            )
    }
    ///The nested dict of `stats`, shared like this one.
    pub fn stats(&self) -> &::ultradict::__private::Nested<Stats> {
        &self.stats
    }
    ///Replaces all of `stats` (one full dump of its dict).
    ///
    /// # Errors
    /// If the full dump could not be written; nothing changed then.
    pub fn set_stats(&self, value: Stats) -> ::ultradict::Result<()> {
        self.stats.replace(value)
    }
    ///The nested dict of `workers`, shared like this one.
    pub fn workers(&self) -> &::ultradict::UltraDict<u32, Worker> {
        &self.workers
    }
    ///Replaces all of `workers` (one full dump of its dict).
    ///
    /// # Errors
    /// If the full dump could not be written; nothing changed then.
    pub fn set_workers(&self, value: HashMap<u32, Worker>) -> ::ultradict::Result<()> {
        self.workers.replace_all(value)
    }
    ///An owned copy of the whole [`AppState`], nested dicts included.
    ///
    /// # Errors
    /// If shared memory fails validation.
    pub fn snapshot(&self) -> ::ultradict::Result<AppState> {
        let _guard = self.lock()?;
        let __fields = self.__dict.fields()?;
        ::core::result::Result::Ok(AppState {
            counter: __fields.counter,
            label: __fields.label,
            stats: self.stats.snapshot()?,
            workers: self.workers.to_hashmap()?,
        })
    }
    ///Replaces the whole [`AppState`]: nested dicts first, then the plain fields in one record, so a process that sees the new plain fields also sees the new nested values.
    ///
    /// # Errors
    /// If a full dump could not be written; nothing changed in this dict then.
    pub fn replace(&self, value: AppState) -> ::ultradict::Result<()> {
        let _guard = self.lock()?;
        let AppState { counter, label, stats, workers } = value;
        self.stats.replace(stats)?;
        self.workers.replace_all(workers)?;
        self.__dict
            .write(
                ::ultradict::__private::StructFields::replace_all(__UltradictFieldsOfAppState {
                    counter,
                    label,
                }),
            )?;
        ::core::result::Result::Ok(())
    }
    ::ultradict::__handle_methods!(__dict, & 'static str);
    /// Closes the handle and returns the final state. Under `Lifetime::LastClose`
    /// the last handle to close removes the state and its nested dicts.
    ///
    /// # Errors
    /// As `snapshot`, or if removing segments failed.
    pub fn close(self) -> ::ultradict::Result<AppState> {
        let value = self.snapshot()?;
        let SharedAppState { __dict, stats, workers } = self;
        ::core::mem::drop(stats);
        ::core::mem::drop(workers);
        __dict.close()?;
        ::core::result::Result::Ok(value)
    }
}
#[cfg(not(doc))]
#[automatically_derived]
impl ::ultradict::SharedDict for AppState
where
    for<'__ud> u64: ::ultradict::__private::Storable,
    for<'__ud> String: ::ultradict::__private::Storable,
    for<'__ud> u32: ::ultradict::__private::StorableKey,
    for<'__ud> Worker: ::ultradict::__private::Storable,
{
    type Handle = SharedAppState;
    fn __open(
        __options: &::ultradict::__private::OpenOptions,
        __initial: Self,
    ) -> ::ultradict::Result<SharedAppState> {
        let AppState { counter, label, stats, workers } = __initial;
        let __dict = ::ultradict::__private::StructDict::open_state(
            __options,
            __UltradictFieldsOfAppState {
                counter,
                label,
            },
        )?;
        let stats = ::ultradict::__private::Nested::open_in(
            ::ultradict::__private::nested_ops::<Stats>(),
            &__dict,
            &__options.child(&__dict, "stats"),
            stats,
            "nested field stats of AppState",
        )?;
        let workers = __options.open_nested_map(&__dict, "by-id", workers)?;
        ::core::result::Result::Ok(SharedAppState {
            __dict,
            stats,
            workers,
        })
    }
    fn __snapshot(handle: &SharedAppState) -> ::ultradict::Result<Self> {
        handle.snapshot()
    }
    fn __replace(handle: &SharedAppState, value: Self) -> ::ultradict::Result<()> {
        handle.replace(value)
    }
    fn __discard_if_created(handle: &SharedAppState) {
        handle.__dict.discard_if_created();
    }
}
#[cfg(doc)]
#[automatically_derived]
impl ::ultradict::SharedDict for AppState {
    type Handle = SharedAppState;
    fn __open(
        __options: &::ultradict::__private::OpenOptions,
        __initial: Self,
    ) -> ::ultradict::Result<SharedAppState> {
        let AppState { counter, label, stats, workers } = __initial;
        let __dict = ::ultradict::__private::StructDict::open_state(
            __options,
            __UltradictFieldsOfAppState {
                counter,
                label,
            },
        )?;
        let stats = ::ultradict::__private::Nested::open_in(
            ::ultradict::__private::nested_ops::<Stats>(),
            &__dict,
            &__options.child(&__dict, "stats"),
            stats,
            "nested field stats of AppState",
        )?;
        let workers = __options.open_nested_map(&__dict, "by-id", workers)?;
        ::core::result::Result::Ok(SharedAppState {
            __dict,
            stats,
            workers,
        })
    }
    fn __snapshot(handle: &SharedAppState) -> ::ultradict::Result<Self> {
        handle.snapshot()
    }
    fn __replace(handle: &SharedAppState, value: Self) -> ::ultradict::Result<()> {
        handle.replace(value)
    }
    fn __discard_if_created(handle: &SharedAppState) {
        handle.__dict.discard_if_created();
    }
}
