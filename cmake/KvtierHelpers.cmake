# Warnings for every kvtier target.
function(kvtier_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -Xcompiler=-Wall>)
  target_include_directories(${target} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>)
  if(KVTIER_WITH_CUDA)
    target_compile_definitions(${target} PUBLIC KVTIER_WITH_CUDA=1)
  endif()
  if(KVTIER_SYNC_AFTER_LAUNCH)
    target_compile_definitions(${target} PUBLIC KVTIER_SYNC_AFTER_LAUNCH=1)
  endif()
endfunction()

# kvtier_add_test(NAME <name> SOURCES <files...> LABEL cpu|gpu LIBS <targets...>)
# One GoogleTest binary, registered with ctest test by test under the given label.
function(kvtier_add_test)
  cmake_parse_arguments(T "" "NAME;LABEL" "SOURCES;LIBS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  kvtier_target_defaults(${T_NAME})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  gtest_discover_tests(${T_NAME} PROPERTIES LABELS ${T_LABEL} DISCOVERY_TIMEOUT 60)
endfunction()
